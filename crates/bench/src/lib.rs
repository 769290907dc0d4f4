//! Benchmark and drill tooling for incidentlog: a deterministic generator of realistic
//! incident logs, latency statistics, and (feature `fuzzing`) the fuzz target bodies shared by
//! `fuzz/` and the stable fallback test. The `incidentlog-load` binary (feature `load`) drives
//! the real server over loopback HTTP.
#![forbid(unsafe_code)]

pub mod rng;
pub mod stats;
pub mod synth;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
