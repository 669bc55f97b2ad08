//! libFuzzer entry for [`echoview_fuzz::dicom_reader`]; the body is shared with tests/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| echoview_fuzz::dicom_reader(data));
