//! libFuzzer entry for [`echoview_fuzz::dicom_reader`]; the body is shared with tests/fuzz_regressions.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // `dicom::read` catches a panic inside the third-party JPEG and JPEG 2000 codecs and
        // makes it that frame's error (dicom-rs 0.10's JPEG adapter slices past a short
        // fragment). libfuzzer-sys's panic hook aborts before that catch is reached, so this
        // target puts the default hook back: a panic that escapes echoview is still a crash,
        // since libfuzzer-sys aborts on it once it has unwound.
        drop(std::panic::take_hook());
    },
    |data: &[u8]| echoview_fuzz::dicom_reader(data)
);
