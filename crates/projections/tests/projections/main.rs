//! Integration tests of incidentlog-projections (one test binary).
mod common;
mod seed;
