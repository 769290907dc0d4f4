//! Event decoding and validation (append bodies and stored events) on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    incidentlog_bench::fuzzing::event_decoding(data);
});
