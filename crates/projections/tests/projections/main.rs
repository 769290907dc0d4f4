//! Integration tests of incidentlog-projections (one test binary).
// Test tables are tuples by design.
#![allow(clippy::type_complexity)]
mod common;
mod props;
mod rules;
mod schemas;
mod seed;
mod validation;
mod views;
