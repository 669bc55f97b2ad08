//! Motion-JPEG frames: completing them with the standard Huffman tables, reading their size,
//! and decoding their luma.
//!
//! A USB grabber that sends MJPEG usually sends each frame as a baseline JPEG *without* a DHT
//! (define Huffman table) segment: the USB Video Class lets a device rely on the standard tables
//! of ITU-T T.81 Annex K.3 to save bandwidth. Such a frame is not a complete JPEG file, and
//! general decoders (including `zune-jpeg`, unless the frame carries an `AVI1` APP0 marker)
//! refuse it. [`with_standard_tables`] inserts those tables, so every MJPEG frame echoview
//! stores, replays or decodes is an ordinary JPEG image that any tool opens.
//!
//! Only the headers are parsed here, by walking the marker segments up to the start of the
//! scan; the entropy-coded data is left to `zune-jpeg`.

use std::borrow::Cow;

use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// Why a JPEG frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// The bytes do not start with the start-of-image marker `FF D8`.
    #[error("not a JPEG image: it starts with {found}, not the start-of-image marker FF D8")]
    NotJpeg {
        /// The first bytes, in hex.
        found: String,
    },
    /// The headers end, or a segment length runs, past the end of the data: a frame cut short
    /// in transfer.
    #[error("JPEG headers are cut short at byte {at} of {len}; the frame was damaged in transfer")]
    Truncated {
        /// Where the walk stopped.
        at: usize,
        /// Bytes in the frame.
        len: usize,
    },
    /// A byte sequence in the headers that is not a marker segment.
    #[error("malformed JPEG headers at byte {at}: {detail}")]
    Malformed {
        /// Where the problem is.
        at: usize,
        /// What is wrong.
        detail: String,
    },
    /// The image uses a coding process echoview does not decode.
    #[error("unsupported JPEG: {0}; configure the grabber for baseline Motion-JPEG")]
    Unsupported(String),
    /// The decoder rejected the compressed data.
    #[error("JPEG decoding failed: {0}")]
    Decode(String),
}

/// What the headers say about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    /// Width in pixels, from the start-of-frame segment.
    pub width: u32,
    /// Height in pixels, from the start-of-frame segment.
    pub height: u32,
    /// Colour components: 1 for greyscale, 3 for YCbCr.
    pub components: u8,
}

/// One Huffman table as a DHT segment carries it (T.81 B.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HuffmanTable {
    /// Table class: 0 for DC coefficients, 1 for AC coefficients.
    pub class: u8,
    /// Destination id the scan's components refer to (0: luminance, 1: chrominance).
    pub id: u8,
    /// Number of codes of each length 1..=16 bits.
    pub counts: [u8; 16],
    /// The symbols, in order of increasing code length.
    pub values: &'static [u8],
}

/// The tables of ITU-T T.81 Annex K.3 (Tables K.3 to K.6), which UVC MJPEG frames without a
/// DHT segment are coded with: DC luminance, AC luminance, DC chrominance, AC chrominance.
pub const STANDARD_TABLES: [HuffmanTable; 4] = [
    HuffmanTable {
        class: 0,
        id: 0,
        counts: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        values: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    },
    HuffmanTable {
        class: 1,
        id: 0,
        counts: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
        values: &[
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
            0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1,
            0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18,
            0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39,
            0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57,
            0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
            0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92,
            0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8,
            0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    },
    HuffmanTable {
        class: 0,
        id: 1,
        counts: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        values: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    },
    HuffmanTable {
        class: 1,
        id: 1,
        counts: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        values: &[
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07,
            0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09,
            0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25,
            0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38,
            0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56,
            0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74,
            0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
            0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
            0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6,
            0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    },
];

/// Largest width or height decoded, in pixels: above any capture size (8K is 7680), and it
/// bounds what a damaged size field can make the decoder allocate (64 MiB of luma).
pub const MAX_SIDE: u32 = 8192;

/// Marker codes (the byte after `FF`) the header walk acts on.
mod marker {
    /// Start of image.
    pub const SOI: u8 = 0xD8;
    /// End of image.
    pub const EOI: u8 = 0xD9;
    /// Start of scan: the headers end here.
    pub const SOS: u8 = 0xDA;
    /// Define Huffman tables.
    pub const DHT: u8 = 0xC4;
    /// Baseline DCT start of frame.
    pub const SOF0: u8 = 0xC0;
    /// Extended sequential DCT start of frame (Huffman).
    pub const SOF1: u8 = 0xC1;
    /// Progressive DCT start of frame (Huffman).
    pub const SOF2: u8 = 0xC2;
}

/// What the walk over the header segments found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Headers {
    /// A DHT segment comes before the scan.
    has_dht: bool,
    /// Offset of the `FF` that starts the first SOS marker (fill bytes before it included).
    sos_at: usize,
    /// The start-of-frame segment's contents, if one came before the scan.
    info: Option<JpegInfo>,
}

/// Walks the marker segments from SOI to the first SOS.
fn walk(jpeg: &[u8]) -> Result<Headers, JpegError> {
    if !jpeg.starts_with(&[0xFF, marker::SOI]) {
        let found: Vec<String> = jpeg.iter().take(4).map(|b| format!("{b:02X}")).collect();
        return Err(JpegError::NotJpeg {
            found: if found.is_empty() {
                "nothing (0 bytes)".to_string()
            } else {
                found.join(" ")
            },
        });
    }
    let truncated = |at: usize| JpegError::Truncated {
        at,
        len: jpeg.len(),
    };
    let mut has_dht = false;
    let mut info = None;
    let mut pos = 2;
    loop {
        let start = pos;
        match jpeg.get(pos) {
            Some(0xFF) => {}
            Some(other) => {
                return Err(JpegError::Malformed {
                    at: pos,
                    detail: format!("expected a marker (FF), found {other:02X}"),
                });
            }
            None => return Err(truncated(pos)),
        }
        // Any number of FF fill bytes may precede a marker code (T.81 B.1.1.2).
        while jpeg.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let code = *jpeg.get(pos).ok_or_else(|| truncated(pos))?;
        pos += 1;
        match code {
            marker::SOS => {
                return Ok(Headers {
                    has_dht,
                    sos_at: start,
                    info,
                });
            }
            // Standalone markers carry no length; none belongs before the scan, but skipping
            // them is harmless and some encoders emit a stray one.
            0x01 | 0xD0..=0xD7 => continue,
            marker::SOI | marker::EOI => {
                return Err(JpegError::Malformed {
                    at: start,
                    detail: format!("marker FF {code:02X} before any image data"),
                });
            }
            _ => {}
        }
        let len_bytes = jpeg.get(pos..pos + 2).ok_or_else(|| truncated(pos))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(JpegError::Malformed {
                at: pos,
                detail: format!("segment FF {code:02X} has length {len}, below its own 2 bytes"),
            });
        }
        let body = jpeg.get(pos + 2..pos + len).ok_or_else(|| truncated(pos))?;
        match code {
            marker::DHT => has_dht = true,
            marker::SOF0 | marker::SOF1 | marker::SOF2 => info = Some(parse_sof(body, pos)?),
            // The other start-of-frame codes: lossless, hierarchical and arithmetic coding.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(JpegError::Unsupported(format!(
                    "start-of-frame FF {code:02X} (lossless, hierarchical or arithmetic coding)"
                )));
            }
            _ => {}
        }
        pos += len;
    }
}

/// Reads precision, size and component count from a start-of-frame body (T.81 B.2.2).
fn parse_sof(body: &[u8], at: usize) -> Result<JpegInfo, JpegError> {
    let [precision, h0, h1, w0, w1, components, ..] = *body else {
        return Err(JpegError::Malformed {
            at,
            detail: format!(
                "start-of-frame segment of {} bytes is too short",
                body.len()
            ),
        });
    };
    if precision != 8 {
        return Err(JpegError::Unsupported(format!(
            "{precision}-bit samples (only 8-bit)"
        )));
    }
    let (height, width) = (u16::from_be_bytes([h0, h1]), u16::from_be_bytes([w0, w1]));
    if height == 0 || width == 0 {
        return Err(JpegError::Unsupported(format!(
            "a {width}x{height} frame (a zero height is defined later by a DNL marker)"
        )));
    }
    Ok(JpegInfo {
        width: u32::from(width),
        height: u32::from(height),
        components,
    })
}

/// Whether the JPEG ends with the end-of-image marker `FF D9` (zero bytes after it, which some
/// grabbers pad buffers with, are allowed). A frame cut short in transfer keeps intact headers
/// (so [`info`] reads it) but loses its end; telling that costs a scan of the trailing padding
/// only, where decoding to find out would cost the whole image.
pub fn ends_complete(jpeg: &[u8]) -> bool {
    let end = jpeg.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    end >= 4 && jpeg[end - 2..end] == [0xFF, marker::EOI]
}

/// The size and component count a JPEG's headers declare.
pub fn info(jpeg: &[u8]) -> Result<JpegInfo, JpegError> {
    walk(jpeg)?.info.ok_or_else(|| JpegError::Malformed {
        at: 2,
        detail: "no start-of-frame segment before the scan".to_string(),
    })
}

/// Appends one DHT segment holding [`STANDARD_TABLES`].
fn push_standard_dht(out: &mut Vec<u8>) {
    let body: usize = STANDARD_TABLES
        .iter()
        .map(|t| 1 + t.counts.len() + t.values.len())
        .sum();
    // 2 length bytes + 4 tables of 1 + 16 + 12 or 1 + 16 + 162 bytes: 418, well inside u16.
    let len = (2 + body) as u16;
    out.extend_from_slice(&[0xFF, marker::DHT]);
    out.extend_from_slice(&len.to_be_bytes());
    for t in &STANDARD_TABLES {
        out.push((t.class << 4) | t.id);
        out.extend_from_slice(&t.counts);
        out.extend_from_slice(t.values);
    }
}

/// The frame as a complete JPEG: unchanged (borrowed) when it defines Huffman tables, or with
/// a DHT segment of the standard tables inserted just before the scan when it does not.
///
/// Frames that define some tables are left as they are: a partial DHT is the encoder's choice
/// and the decoder will say if a table is missing.
pub fn with_standard_tables(jpeg: &[u8]) -> Result<Cow<'_, [u8]>, JpegError> {
    let headers = walk(jpeg)?;
    if headers.has_dht {
        return Ok(Cow::Borrowed(jpeg));
    }
    let mut out = Vec::with_capacity(jpeg.len() + 420);
    out.extend_from_slice(&jpeg[..headers.sos_at]);
    push_standard_dht(&mut out);
    out.extend_from_slice(&jpeg[headers.sos_at..]);
    Ok(Cow::Owned(out))
}

/// Decodes the luma (Y) plane of a JPEG into `out`, resized to `width * height` bytes, and
/// returns `(width, height)`. Frames without Huffman tables get the standard ones first.
/// Images over [`MAX_SIDE`] pixels per side are refused before anything is allocated.
///
/// For a YCbCr image the luma is the Y component as coded (JPEG's full-range BT.601 luma); a
/// greyscale image's only component is returned as is.
pub fn decode_luma(jpeg: &[u8], out: &mut Vec<u8>) -> Result<(u32, u32), JpegError> {
    let complete = with_standard_tables(jpeg)?;
    let image = info(&complete)?;
    if image.width > MAX_SIDE || image.height > MAX_SIDE {
        return Err(JpegError::Unsupported(format!(
            "a {}x{} image (at most {MAX_SIDE} pixels per side)",
            image.width, image.height
        )));
    }
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::Luma)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize);
    let mut decoder = JpegDecoder::new_with_options(complete.as_ref(), options);
    decoder
        .decode_headers()
        .map_err(|e| JpegError::Decode(e.to_string()))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| JpegError::Decode("the decoder read no image size".to_string()))?;
    if (w, h) != (image.width as usize, image.height as usize) {
        return Err(JpegError::Decode(format!(
            "decoder reports {w}x{h}, the headers say {}x{}",
            image.width, image.height
        )));
    }
    out.clear();
    out.resize(w * h, 0);
    decoder
        .decode_into(out)
        .map_err(|e| JpegError::Decode(e.to_string()))?;
    Ok((image.width, image.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal header sequence: SOI, an APP0 of `app_len` body bytes, SOF0 for 3x2 grey,
    /// then SOS and two bytes of "scan data".
    fn headers(app_len: usize) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE0];
        j.extend_from_slice(&((app_len + 2) as u16).to_be_bytes());
        j.extend(std::iter::repeat_n(0xAB, app_len));
        j.extend_from_slice(&[0xFF, 0xC0, 0, 11, 8, 0, 2, 0, 3, 1, 1, 0x11, 0]);
        j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0, 0x12, 0x34]);
        j
    }

    #[test]
    fn standard_tables_are_complete_prefix_codes() {
        for t in &STANDARD_TABLES {
            let n: usize = t.counts.iter().map(|&c| usize::from(c)).sum();
            assert_eq!(n, t.values.len(), "table {}/{}", t.class, t.id);
            // Kraft sum below 1: every code fits, and the all-ones code stays free (T.81 C).
            let kraft: f64 = t
                .counts
                .iter()
                .enumerate()
                .map(|(i, &c)| f64::from(c) / 2f64.powi(i as i32 + 1))
                .sum();
            assert!(kraft < 1.0, "table {}/{}: {kraft}", t.class, t.id);
        }
        let mut seg = Vec::new();
        push_standard_dht(&mut seg);
        assert_eq!(seg.len(), 2 + 418);
        assert_eq!(&seg[..4], &[0xFF, 0xC4, 0x01, 0xA2]);
    }

    #[test]
    fn inserts_the_tables_before_the_scan() {
        let j = headers(5);
        let sos = j.len() - 12;
        let out = with_standard_tables(&j).unwrap();
        assert!(matches!(out, Cow::Owned(_)));
        assert_eq!(&out[..sos], &j[..sos]);
        assert_eq!(&out[sos..sos + 2], &[0xFF, 0xC4]);
        assert_eq!(&out[sos + 420..], &j[sos..]);
        // Once inserted, the frame is complete and comes back untouched.
        assert!(matches!(
            with_standard_tables(&out).unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            info(&out).unwrap(),
            JpegInfo {
                width: 3,
                height: 2,
                components: 1
            }
        );
    }

    #[test]
    fn fill_bytes_before_the_scan_stay_before_the_tables() {
        let mut j = headers(0);
        let sos = j.len() - 12;
        j.insert(sos, 0xFF);
        let out = with_standard_tables(&j).unwrap();
        assert_eq!(&out[sos..sos + 2], &[0xFF, 0xC4]);
        assert_eq!(&out[sos + 420..sos + 423], &[0xFF, 0xFF, 0xDA]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let j = headers(3);
        let sos = j.len() - 12;
        for cut in 0..=sos + 1 {
            let err = with_standard_tables(&j[..cut]).unwrap_err();
            assert!(
                matches!(err, JpegError::NotJpeg { .. } | JpegError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn malformed_and_unsupported_headers_are_named() {
        let mut bad_len = headers(0);
        bad_len[5] = 1;
        assert!(matches!(
            info(&bad_len),
            Err(JpegError::Malformed { at: 4, .. })
        ));
        let mut not_marker = headers(0);
        not_marker[6] = 0x00;
        assert!(with_standard_tables(&not_marker).is_err());
        let mut lossless = headers(0);
        lossless[7] = 0xC3;
        assert!(matches!(info(&lossless), Err(JpegError::Unsupported(_))));
        let mut twelve_bit = headers(0);
        twelve_bit[10] = 12;
        assert!(matches!(info(&twelve_bit), Err(JpegError::Unsupported(_))));
        let mut huge = headers(0);
        huge[11..15].copy_from_slice(&[0x20, 0x01, 0x00, 0x03]);
        assert_eq!(info(&huge).unwrap().height, 8193);
        assert!(matches!(
            decode_luma(&huge, &mut Vec::new()),
            Err(JpegError::Unsupported(m)) if m.contains("3x8193")
        ));
        let err = info(b"GIF89a").unwrap_err().to_string();
        assert!(err.contains("47 49 46 38"), "{err}");
    }
}
