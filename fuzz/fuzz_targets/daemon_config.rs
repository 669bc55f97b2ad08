//! libFuzzer entry for [`echoview_fuzz::daemon_config`]; the body is shared with tests/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| echoview_fuzz::daemon_config(data));
