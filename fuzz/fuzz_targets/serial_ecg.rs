//! libFuzzer entry for [`echoview_fuzz::serial_ecg`]; the body is shared with tests/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| echoview_fuzz::serial_ecg(data));
