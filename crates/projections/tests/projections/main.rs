//! Integration tests of incidentlog-projections (one test binary).
mod common;
mod props;
mod rules;
mod schemas;
mod seed;
mod validation;
mod views;
