//! Integration tests of incidentlog-projections (one test binary).
mod common;
mod rules;
mod seed;
mod validation;
mod views;
