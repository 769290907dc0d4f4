//! The file store's record decoder on arbitrary segment bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    incidentlog_bench::fuzzing::record_decoder(data);
});
