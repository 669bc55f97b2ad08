//! Every capture pixel format, converted to luma and preprocessed, against hand-computed values.
//!
//! Frames are built byte by byte with odd sizes and padded rows (the padding filled with a value
//! that would show up if it leaked into the image), and the JPEG fixtures in
//! `tests/data/jpeg/` (written by `make.py` there with libjpeg's standard tables) check the
//! Huffman-table insertion for Motion-JPEG frames that come without them.

use echoview::jpeg::{self, JpegError, STANDARD_TABLES};
use echoview::media::{Frame, PixelFormat};
use echoview::preprocess::{
    ImageRegion, PreprocessConfig, PreprocessError, Preprocessor, Rect, luma_plane,
};

/// Padding bytes: a value no test image uses, so leaked padding is caught.
const PAD: u8 = 0xEE;

fn frame(format: PixelFormat, width: u32, height: u32, stride: u32, data: Vec<u8>) -> Frame {
    Frame {
        seq: 7,
        t_ns: 1_000,
        width,
        height,
        stride,
        format,
        data,
    }
}

/// Rows of bytes, each padded with [`PAD`] to `stride`.
fn padded(rows: &[&[u8]], stride: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        assert!(row.len() <= stride);
        out.extend_from_slice(row);
        out.resize(out.len() + stride - row.len(), PAD);
    }
    out
}

fn luma(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    luma_plane(f, &mut out).unwrap_or_else(|e| panic!("{}: {e}", f.format.name()));
    out
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/jpeg/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A binary PGM's size and pixels.
fn pgm(name: &str) -> (u32, u32, Vec<u8>) {
    let data = fixture(name);
    let text = String::from_utf8_lossy(&data[..20]).to_string();
    let fields: Vec<&str> = text.split_ascii_whitespace().take(4).collect();
    assert_eq!(fields[0], "P5", "{name}");
    let (w, h): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let pixels = data[data.len() - (w * h) as usize..].to_vec();
    (w, h, pixels)
}

#[test]
fn grey_rows_are_copied_without_their_padding() {
    let f = frame(
        PixelFormat::Grey8,
        3,
        2,
        5,
        padded(&[&[10, 20, 30], &[40, 50, 60]], 5),
    );
    assert_eq!(luma(&f), [10, 20, 30, 40, 50, 60]);
}

#[test]
fn yuyv_and_uyvy_take_the_y_bytes() {
    // 4x3, stride 10 (2 bytes of padding per row). Chroma bytes are 1..=9, never luma values.
    let y = [
        [100u8, 110, 120, 130],
        [140, 150, 160, 170],
        [180, 190, 200, 210],
    ];
    let yuyv: Vec<Vec<u8>> = y
        .iter()
        .map(|r| vec![r[0], 1, r[1], 2, r[2], 3, r[3], 4])
        .collect();
    let uyvy: Vec<Vec<u8>> = y
        .iter()
        .map(|r| vec![5, r[0], 6, r[1], 7, r[2], 8, r[3]])
        .collect();
    let expected: Vec<u8> = y.concat();
    for (format, rows) in [(PixelFormat::Yuyv, yuyv), (PixelFormat::Uyvy, uyvy)] {
        let refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let f = frame(format, 4, 3, 10, padded(&refs, 10));
        assert_eq!(luma(&f), expected, "{}", format.name());
    }
    // An odd width cannot be packed in pairs.
    let odd = frame(PixelFormat::Uyvy, 3, 1, 8, vec![0; 8]);
    let err = luma_plane(&odd, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("UYVY needs an even width"), "{err}");
}

#[test]
fn nv12_takes_the_luma_plane_with_odd_width_and_height() {
    // 5x3: the chroma plane has ceil(3 / 2) = 2 rows of ceil(5 / 2) = 3 pairs (6 bytes), so the
    // stride must be at least 6; here it is 7. Chroma bytes are below 10, never luma values.
    let luma_rows: [&[u8]; 3] = [
        &[11, 12, 13, 14, 15],
        &[21, 22, 23, 24, 25],
        &[31, 32, 33, 34, 35],
    ];
    let chroma_rows: [&[u8]; 2] = [&[1, 2, 3, 4, 5, 6], &[7, 8, 9, 1, 2, 3]];
    let mut data = padded(&luma_rows, 7);
    data.extend(padded(&chroma_rows, 7));
    assert_eq!(PixelFormat::Nv12.image_len(7, 3), Some(35));
    let f = frame(PixelFormat::Nv12, 5, 3, 7, data.clone());
    assert_eq!(luma(&f), luma_rows.concat());
    assert_eq!(f.image_bytes().len(), 35);

    // A stride of 5 holds the luma rows but not the 6-byte chroma rows.
    let narrow = frame(PixelFormat::Nv12, 5, 3, 5, vec![0; 40]);
    let err = luma_plane(&narrow, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stride 5 is shorter than a row of 6 bytes"),
        "{err}"
    );
    // Without the last chroma row the frame is short.
    let mut short = f.clone();
    short.data.truncate(34);
    let err = luma_plane(&short, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("needs 35"), "{err}");
}

#[test]
fn rgb24_uses_bt601_luma_in_integers() {
    // Y = 0.299 R + 0.587 G + 0.114 B, rounded:
    //   (255, 0, 0) -> 76.2 -> 76     (0, 255, 0) -> 149.7 -> 150   (0, 0, 255) -> 29.1 -> 29
    //   (10, 200, 30) -> 123.8 -> 124 (200, 100, 50) -> 124.2 -> 124 (1, 2, 3) -> 1.8 -> 2
    // and grey pixels keep their value: (0, 0, 0) -> 0, (128, 128, 128) -> 128, white -> 255.
    let rows: [&[u8]; 3] = [
        &[255, 0, 0, 0, 255, 0, 0, 0, 255],
        &[10, 200, 30, 200, 100, 50, 1, 2, 3],
        &[0, 0, 0, 128, 128, 128, 255, 255, 255],
    ];
    let f = frame(PixelFormat::Rgb24, 3, 3, 11, padded(&rows, 11));
    assert_eq!(luma(&f), [76, 150, 29, 124, 124, 2, 0, 128, 255]);
    // Every grey level maps to itself, so greyscale ultrasound passes through unchanged.
    let greys: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let f = frame(PixelFormat::Rgb24, 256, 1, 768, greys);
    assert_eq!(luma(&f), (0..=255u8).collect::<Vec<_>>());
}

#[test]
fn pixel_format_names_and_codes_round_trip() {
    for f in PixelFormat::ALL {
        assert_eq!(PixelFormat::from_name(f.name()), Some(f));
        assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
    }
    assert_eq!(PixelFormat::from_name("rgb24"), Some(PixelFormat::Rgb24));
    assert_eq!(PixelFormat::from_name(" mjpeg"), Some(PixelFormat::Mjpeg));
    assert_eq!(PixelFormat::from_fourcc(*b"H264"), None);
}

/// The Huffman tables of a JPEG's DHT segments, in file order.
fn dht_tables(jpeg: &[u8]) -> Vec<(u8, u8, [u8; 16], Vec<u8>)> {
    let mut tables = Vec::new();
    let mut pos = 2;
    while jpeg[pos + 1] != 0xDA {
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        if jpeg[pos + 1] == 0xC4 {
            let mut body = &jpeg[pos + 4..pos + 2 + len];
            while let Some((&tc_th, rest)) = body.split_first() {
                let mut counts = [0u8; 16];
                counts.copy_from_slice(&rest[..16]);
                let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                tables.push((tc_th >> 4, tc_th & 15, counts, rest[16..16 + n].to_vec()));
                body = &rest[16 + n..];
            }
        }
        pos += 2 + len;
    }
    tables
}

#[test]
fn standard_tables_are_the_ones_libjpeg_writes() {
    // libjpeg (through Pillow, optimize=False) codes with the Annex K.3 tables; the fixture
    // holds all four, in the order DC 0, AC 0, DC 1, AC 1.
    let found = dht_tables(&fixture("colour_422_45x29.jpg"));
    let ours: Vec<(u8, u8, [u8; 16], Vec<u8>)> = STANDARD_TABLES
        .iter()
        .map(|t| (t.class, t.id, t.counts, t.values.to_vec()))
        .collect();
    assert_eq!(found, ours);
}

#[test]
fn jpeg_without_huffman_tables_decodes_like_the_original() {
    for name in ["colour_422_45x29", "grey_33x17"] {
        let original = fixture(&format!("{name}.jpg"));
        let stripped = fixture(&format!("{name}_nodht.jpg"));
        assert!(
            dht_tables(&stripped).is_empty(),
            "{name}: fixture still has tables"
        );

        // A general decoder refuses the stripped frame: the insertion is what makes it work.
        let mut plain = zune_jpeg::JpegDecoder::new(stripped.as_slice());
        assert!(plain.decode().is_err(), "{name}: decoded without tables");

        let completed = jpeg::with_standard_tables(&stripped).unwrap();
        assert!(!dht_tables(&completed).is_empty());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let size_a = jpeg::decode_luma(&original, &mut a).unwrap();
        let size_b = jpeg::decode_luma(&stripped, &mut b).unwrap();
        assert_eq!(size_a, size_b);
        assert_eq!(a, b, "{name}: pixels differ after insertion");

        // And both match libjpeg's luma to within the IDCT's rounding.
        let (w, h, reference) = pgm(&format!("{name}.luma.pgm"));
        assert_eq!(size_a, (w, h));
        let worst = a
            .iter()
            .zip(&reference)
            .map(|(&x, &y)| x.abs_diff(y))
            .max()
            .unwrap();
        assert!(worst <= 1, "{name}: differs from libjpeg by up to {worst}");
    }
}

#[test]
fn mjpeg_frames_preprocess_through_the_insertion() {
    let stripped = fixture("colour_422_45x29_nodht.jpg");
    let f = frame(PixelFormat::Mjpeg, 45, 29, 0, stripped.clone());
    let (_, _, reference) = pgm("colour_422_45x29.luma.pgm");
    let got = luma(&f);
    assert!(
        got.iter()
            .zip(&reference)
            .all(|(&x, &y)| x.abs_diff(y) <= 1)
    );

    // The frame header must agree with the image.
    let wrong = frame(PixelFormat::Mjpeg, 44, 29, 0, stripped.clone());
    let err = luma_plane(&wrong, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&err, PreprocessError::BadFrame(m) if m.contains("JPEG image is 45x29, the frame says 44x29")),
        "{err}"
    );
    let strided = frame(PixelFormat::Mjpeg, 45, 29, 90, stripped.clone());
    assert!(luma_plane(&strided, &mut Vec::new()).is_err());
    // A frame cut off in transfer is a bad frame, not a panic.
    for cut in [0, 1, 2, 100, stripped.len() / 2] {
        let cut_frame = frame(PixelFormat::Mjpeg, 45, 29, 0, stripped[..cut].to_vec());
        assert!(
            matches!(
                luma_plane(&cut_frame, &mut Vec::new()),
                Err(PreprocessError::BadFrame(_)) | Ok(())
            ),
            "cut {cut}"
        );
    }
    assert!(matches!(
        jpeg::info(&stripped[..100]),
        Err(JpegError::Truncated { .. })
    ));
}

/// The same luma picture in every uncompressed format: luma bytes `y(x, row)` and chroma bytes
/// that differ per format, with `extra` bytes of row padding.
fn encode(format: PixelFormat, w: u32, h: u32, extra: u32, y: &dyn Fn(u32, u32) -> u8) -> Frame {
    let stride = format.min_stride(w) as u32 + extra;
    let len = format.image_len(stride, h).unwrap() as usize;
    let mut data = vec![PAD; len];
    for row in 0..h {
        for x in 0..w {
            let v = y(x, row);
            let at = (row * stride) as usize;
            let xi = x as usize;
            match format {
                PixelFormat::Grey8 | PixelFormat::Nv12 => data[at + xi] = v,
                PixelFormat::Yuyv => {
                    data[at + 2 * xi] = v;
                    data[at + 2 * xi + 1] = 3;
                }
                PixelFormat::Uyvy => {
                    data[at + 2 * xi] = 4;
                    data[at + 2 * xi + 1] = v;
                }
                PixelFormat::Rgb24 => data[at + 3 * xi..at + 3 * xi + 3].fill(v),
                PixelFormat::Mjpeg => unreachable!("not an uncompressed format"),
            }
        }
    }
    frame(format, w, h, stride, data)
}

const UNCOMPRESSED: [PixelFormat; 5] = [
    PixelFormat::Grey8,
    PixelFormat::Yuyv,
    PixelFormat::Uyvy,
    PixelFormat::Nv12,
    PixelFormat::Rgb24,
];

/// A beat of three frames: a changing "sector" at x 13..61, y 7..39 (an odd left edge) over a
/// static overlay, with one static pixel inside the sector.
fn beat(format: PixelFormat) -> Vec<Frame> {
    (0..3u32)
        .map(|s| {
            let y = move |x: u32, row: u32| {
                let inside = (13..61).contains(&x) && (7..39).contains(&row);
                if inside && (x, row) != (30, 20) {
                    ((x * 7 + row * 3 + s * 29) % 200 + 20) as u8
                } else if inside {
                    9
                } else {
                    230
                }
            };
            let mut f = encode(format, 70, 45, 6, &y);
            f.seq = u64::from(s);
            f.t_ns = u64::from(s) * 33_000_000;
            f
        })
        .collect()
}

fn config() -> PreprocessConfig {
    PreprocessConfig {
        width: 24,
        height: 20,
        mean: 0.5,
        std: 0.25,
        crop: None,
    }
}

#[test]
fn every_format_preprocesses_to_the_same_tensors() {
    let mut pre = Preprocessor::new(config());
    let len = pre.tensor_len();
    let mut reference: Option<(Vec<f32>, _)> = None;
    for format in UNCOMPRESSED {
        let frames = beat(format);
        let refs: Vec<&Frame> = frames.iter().collect();
        let mut out = vec![f32::NAN; 3 * len];
        let region = pre.prepare_beat(&refs, &mut out).unwrap();
        assert_eq!(
            region.crop,
            Rect {
                x: 13,
                y: 7,
                width: 48,
                height: 32
            },
            "{}",
            format.name()
        );
        match &reference {
            None => reference = Some((out, region)),
            Some((want, want_region)) => {
                assert_eq!(&region, want_region, "{}", format.name());
                assert_eq!(&out, want, "{}", format.name());
            }
        }
    }
}

#[test]
fn frame_by_frame_matches_the_beat_bit_for_bit() {
    let fixed = Rect {
        x: 11,
        y: 5,
        width: 51,
        height: 37,
    };
    for crop in [None, Some(fixed)] {
        let mut pre = Preprocessor::new(PreprocessConfig { crop, ..config() });
        let len = pre.tensor_len();
        for format in UNCOMPRESSED {
            let frames = beat(format);
            let refs: Vec<&Frame> = frames.iter().collect();
            let mut beat_out = vec![0.0; 3 * len];
            let key = pre.prepare_beat(&refs, &mut beat_out).unwrap();
            let region = pre.find_region(&refs).unwrap();
            assert!(region.is_masked());
            assert_eq!(region.key(), key);
            let mut one = vec![0.0; len];
            let mut pixels = vec![0u8; len];
            for (i, f) in frames.iter().enumerate() {
                pre.prepare_frame(f, &region, &mut one).unwrap();
                assert_eq!(one, beat_out[i * len..(i + 1) * len], "{}", format.name());
                pre.prepare_frame_pixels(f, &region, &mut pixels).unwrap();
                let back: Vec<f32> = pixels
                    .iter()
                    .map(|&p| f32::from(p) * (1.0 / (255.0 * 0.25)) - 0.5 / 0.25)
                    .collect();
                assert_eq!(back, one);
            }
        }
    }
}

#[test]
fn frame_regions_are_checked_against_the_frame() {
    let frames = beat(PixelFormat::Yuyv);
    let mut pre = Preprocessor::new(config());
    let mut out = vec![0.0; pre.tensor_len()];
    let outside = ImageRegion::unmasked(Rect {
        x: 60,
        y: 0,
        width: 11,
        height: 45,
    });
    assert!(matches!(
        pre.prepare_frame(&frames[0], &outside, &mut out),
        Err(PreprocessError::CropOutside { .. })
    ));
    let crop = Rect {
        x: 1,
        y: 1,
        width: 4,
        height: 4,
    };
    assert!(matches!(
        ImageRegion::masked(crop, &[1; 15]),
        Err(PreprocessError::MaskSize { needed: 16, .. })
    ));
    // A mask of all-keep changes nothing but the cache key.
    let plain = ImageRegion::unmasked(crop);
    let masked = ImageRegion::masked(crop, &[1; 16]).unwrap();
    assert_ne!(plain.key(), masked.key());
    let mut a = vec![0.0; pre.tensor_len()];
    pre.prepare_frame(&frames[1], &plain, &mut a).unwrap();
    pre.prepare_frame(&frames[1], &masked, &mut out).unwrap();
    assert_eq!(a, out);
    assert!(matches!(
        pre.prepare_frame(&frames[1], &plain, &mut out[..10]),
        Err(PreprocessError::OutputTooSmall { .. })
    ));
}

#[test]
fn every_format_round_trips_through_a_session_file() {
    use echoview::session::{SessionEvent, SessionReader, SessionWriter};

    let mut frames: Vec<Frame> = UNCOMPRESSED
        .iter()
        .map(|&format| {
            // Odd sizes wherever the format allows them (4:2:2 needs an even width).
            let w = if format.bytes_per_pixel() == 2 { 8 } else { 7 };
            encode(format, w, 5, 3, &|x, y| (x * 30 + y * 7) as u8)
        })
        .collect();
    // A grabber's MJPEG frame, completed with its Huffman tables as the capture does.
    let jpeg = jpeg::with_standard_tables(&fixture("colour_422_45x29_nodht.jpg"))
        .unwrap()
        .into_owned();
    frames.push(frame(PixelFormat::Mjpeg, 45, 29, 0, jpeg));
    for (i, f) in frames.iter_mut().enumerate() {
        f.seq = 10 + i as u64;
        f.t_ns = 1_000_000 * (i as u64 + 1);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("formats.mcap");
    let mut writer = SessionWriter::create(&path).unwrap();
    for f in &frames {
        writer.write_frame(f).unwrap();
    }
    writer.finish().unwrap();

    let reader = SessionReader::open(&path).unwrap();
    let counts = reader.summary().unwrap().message_counts.clone();
    assert_eq!(counts.get("/video"), Some(&5));
    assert_eq!(counts.get("/video/compressed"), Some(&1));
    let read: Vec<Frame> = reader
        .map(|event| match event.unwrap() {
            SessionEvent::Frame(f) => f,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(read, frames);
    // What was recorded preprocesses like what was captured.
    for (a, b) in read.iter().zip(&frames) {
        assert_eq!(luma(a), luma(b), "{}", a.format.name());
    }
}
