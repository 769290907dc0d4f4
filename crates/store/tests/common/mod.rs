//! Shared test code: the backend-generic conformance suite and helpers.
#![allow(dead_code)]

pub mod conformance;
pub mod files;
