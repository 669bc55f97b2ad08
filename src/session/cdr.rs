//! The video payloads: ROS 2 `sensor_msgs/msg/Image` (`/video`, uncompressed frames) and
//! `sensor_msgs/msg/CompressedImage` (`/video/compressed`, Motion-JPEG frames) in
//! little-endian CDR.
//!
//! These message types are used, rather than a format of our own, because Foxglove's Image
//! panel (and every ROS 2 tool) decodes them without any plugin. JPEG frames are kept as the
//! grabber sent them (completed with their Huffman tables), not decoded: a tenth of the bytes,
//! and no second lossy step. The codec is written out here instead
//! of pulling in a DDS stack: the message has nine fields and the CDR rules it needs fit in a
//! page. CDR aligns each primitive to its own size, counted from the first byte after the
//! 4-byte encapsulation header.

use crate::media::PixelFormat;

/// The schema name Foxglove and the ROS 2 decoders look the message definition up by.
pub const SCHEMA_NAME: &str = "sensor_msgs/msg/Image";

/// The schema encoding of [`SCHEMA_TEXT`] (MCAP well-known encoding).
pub const SCHEMA_ENCODING: &str = "ros2msg";

/// The message encoding of `/video` payloads (MCAP well-known encoding).
pub const MESSAGE_ENCODING: &str = "cdr";

/// The message definition with its dependencies concatenated, as `ros2 bag` writes it, so a
/// decoder needs nothing but the file.
pub const SCHEMA_TEXT: &str = "\
std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data

================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id

================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
";

/// CDR, little-endian, no options: the representation identifier ROS 2 writes.
const ENCAPSULATION_CDR_LE: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// The `header.frame_id` of every frame; ROS tools use it as the coordinate frame of the image,
/// and one constant name keeps Foxglove's transform tree to a single entry.
pub const FRAME_ID: &str = "ultrasound";

/// The schema name of `/video/compressed` payloads.
pub const COMPRESSED_SCHEMA_NAME: &str = "sensor_msgs/msg/CompressedImage";

/// The `CompressedImage` definition with its dependencies concatenated, as `ros2 bag` writes it.
pub const COMPRESSED_SCHEMA_TEXT: &str = "\
std_msgs/Header header
string format
uint8[] data

================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id

================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
";

/// The `format` of our `CompressedImage` messages: a complete baseline JPEG image, the name
/// Foxglove's Image panel and `image_transport` recognise.
pub const JPEG_FORMAT: &str = "jpeg";

/// The ROS image encoding name of an uncompressed pixel format, as Foxglove's Image panel
/// expects it; `None` for `MJPG`, whose frames travel as `CompressedImage` instead.
pub fn encoding_name(format: PixelFormat) -> Option<&'static str> {
    match format {
        PixelFormat::Grey8 => Some("mono8"),
        PixelFormat::Yuyv => Some("yuv422_yuy2"),
        PixelFormat::Uyvy => Some("uyvy"),
        PixelFormat::Nv12 => Some("nv12"),
        PixelFormat::Rgb24 => Some("rgb8"),
        PixelFormat::Mjpeg => None,
    }
}

/// The encoding names echoview reads, as one line for error messages.
pub const ENCODINGS_READ: &str = "mono8, yuv422_yuy2 (or yuyv), uyvy (or yuv422), nv12, rgb8";

/// The pixel format of a ROS image encoding name: those [`encoding_name`] writes, and the
/// aliases ROS 2 and Foxglove use for the same layouts (`yuyv`, and `yuv422` for UYVY).
pub fn format_from_encoding(name: &str) -> Option<PixelFormat> {
    let alias = match name {
        "yuyv" => Some(PixelFormat::Yuyv),
        "yuv422" => Some(PixelFormat::Uyvy),
        _ => None,
    };
    alias.or_else(|| {
        PixelFormat::ALL
            .into_iter()
            .find(|f| encoding_name(*f) == Some(name))
    })
}

/// The fields of one `sensor_msgs/msg/Image`, borrowing strings and pixels from the payload
/// so decoding copies nothing until the caller builds a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMsg<'a> {
    /// `header.stamp.sec`: whole seconds of the capture time.
    pub sec: i32,
    /// `header.stamp.nanosec`: the rest of the capture time, below one second.
    pub nanosec: u32,
    /// `header.frame_id`: the coordinate frame name ([`FRAME_ID`] for our frames).
    pub frame_id: &'a str,
    /// Image height in rows.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
    /// ROS pixel encoding name ([`encoding_name`]).
    pub encoding: &'a str,
    /// Byte order of multi-byte pixels; meaningless for our 8-bit formats but part of the type.
    pub is_bigendian: u8,
    /// Bytes per row including padding (the frame's stride).
    pub step: u32,
    /// The pixel bytes: [`PixelFormat::image_len`] of them in a well-formed message (`step *
    /// height`, and for `nv12` the chroma rows after the luma rows).
    pub data: &'a [u8],
}

impl<'a> ImageMsg<'a> {
    /// Serialises the message into `out` (cleared first), header included.
    ///
    /// Fails only if a string or the pixel data is longer than CDR's 32-bit lengths allow.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let size = 64 + self.frame_id.len() + self.encoding.len() + self.data.len();
        let mut w = CdrWriter::start(out, size);
        w.header(self.sec, self.nanosec, self.frame_id)?;
        w.u32(self.height);
        w.u32(self.width);
        w.string(self.encoding)?;
        w.u8(self.is_bigendian);
        w.u32(self.step);
        w.bytes(self.data)?;
        Ok(())
    }

    /// Parses a payload written by [`ImageMsg::encode`] or any ROS 2 publisher.
    ///
    /// The error says which field ran past the end or is malformed. Bytes after `data` are
    /// ignored, as CDR allows trailing padding.
    pub fn decode(payload: &'a [u8]) -> Result<ImageMsg<'a>, String> {
        let mut r = CdrReader::start(payload)?;
        let (sec, nanosec, frame_id) = r.header()?;
        Ok(ImageMsg {
            sec,
            nanosec,
            frame_id,
            height: r.u32("height")?,
            width: r.u32("width")?,
            encoding: r.string("encoding")?,
            is_bigendian: r.u8("is_bigendian")?,
            step: r.u32("step")?,
            data: r.bytes("data")?,
        })
    }
}

/// The fields of one `sensor_msgs/msg/CompressedImage`, borrowing from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedImageMsg<'a> {
    /// `header.stamp.sec`: whole seconds of the capture time.
    pub sec: i32,
    /// `header.stamp.nanosec`: the rest of the capture time, below one second.
    pub nanosec: u32,
    /// `header.frame_id`: the coordinate frame name ([`FRAME_ID`] for our frames).
    pub frame_id: &'a str,
    /// How `data` is compressed ([`JPEG_FORMAT`] for our frames).
    pub format: &'a str,
    /// The compressed image.
    pub data: &'a [u8],
}

impl<'a> CompressedImageMsg<'a> {
    /// Serialises the message into `out` (cleared first), header included.
    ///
    /// Fails only if a string or the data is longer than CDR's 32-bit lengths allow.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let size = 48 + self.frame_id.len() + self.format.len() + self.data.len();
        let mut w = CdrWriter::start(out, size);
        w.header(self.sec, self.nanosec, self.frame_id)?;
        w.string(self.format)?;
        w.bytes(self.data)?;
        Ok(())
    }

    /// Parses a payload written by [`CompressedImageMsg::encode`] or any ROS 2 publisher; the
    /// error names the field that is cut short or malformed.
    pub fn decode(payload: &'a [u8]) -> Result<CompressedImageMsg<'a>, String> {
        let mut r = CdrReader::start(payload)?;
        let (sec, nanosec, frame_id) = r.header()?;
        Ok(CompressedImageMsg {
            sec,
            nanosec,
            frame_id,
            format: r.string("format")?,
            data: r.bytes("data")?,
        })
    }
}

/// The payload after its encapsulation header, if the header says little-endian plain CDR.
fn check_header(payload: &[u8]) -> Result<&[u8], String> {
    let Some((header, body)) = payload.split_first_chunk::<4>() else {
        return Err(format!(
            "CDR payload of {} bytes is shorter than its 4-byte encapsulation header",
            payload.len()
        ));
    };
    match header[..2] {
        [0x00, 0x01] => Ok(body),
        [0x00, 0x00] => Err("big-endian CDR is not supported".to_string()),
        _ => Err(format!(
            "encapsulation header {:02x} {:02x} is not plain CDR",
            header[0], header[1]
        )),
    }
}

/// Appends CDR primitives to a buffer that starts with the encapsulation header.
struct CdrWriter<'o> {
    /// The payload being built; alignment counts from byte 4, after the header.
    out: &'o mut Vec<u8>,
}

impl<'o> CdrWriter<'o> {
    /// Clears `out`, reserves `size` bytes and writes the encapsulation header, so every
    /// message starts the same way.
    fn start(out: &'o mut Vec<u8>, size: usize) -> CdrWriter<'o> {
        out.clear();
        out.reserve(size);
        out.extend_from_slice(&ENCAPSULATION_CDR_LE);
        CdrWriter { out }
    }

    /// The `std_msgs/Header` both message types begin with.
    fn header(&mut self, sec: i32, nanosec: u32, frame_id: &str) -> Result<(), String> {
        self.i32(sec);
        self.u32(nanosec);
        self.string(frame_id)
    }

    /// Pads with zeros so the next primitive of `size` bytes is aligned.
    fn align(&mut self, size: usize) {
        let pos = self.out.len() - ENCAPSULATION_CDR_LE.len();
        let pad = (size - pos % size) % size;
        self.out.resize(self.out.len() + pad, 0);
    }

    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.align(4);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.align(4);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes a string or sequence length, refusing one CDR's 32 bits cannot hold.
    fn length(&mut self, len: usize, what: &str) -> Result<(), String> {
        let len = u32::try_from(len)
            .map_err(|_| format!("{what} of {len} bytes exceeds CDR's 32-bit length"))?;
        self.u32(len);
        Ok(())
    }

    /// A CDR string: length including the terminating NUL, the bytes, the NUL.
    fn string(&mut self, s: &str) -> Result<(), String> {
        self.length(s.len() + 1, "string")?;
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
        Ok(())
    }

    /// A `sequence<uint8>`: element count, then the bytes (no alignment for 1-byte elements).
    fn bytes(&mut self, data: &[u8]) -> Result<(), String> {
        self.length(data.len(), "pixel data")?;
        self.out.extend_from_slice(data);
        Ok(())
    }
}

/// Reads CDR primitives from the bytes after the encapsulation header, never past their end.
struct CdrReader<'a> {
    /// The payload after the encapsulation header.
    buf: &'a [u8],
    /// Next byte to read; alignment is relative to the start of `buf`.
    pos: usize,
}

impl<'a> CdrReader<'a> {
    /// A reader over `payload`'s body, once its encapsulation header is checked.
    fn start(payload: &'a [u8]) -> Result<CdrReader<'a>, String> {
        Ok(CdrReader {
            buf: check_header(payload)?,
            pos: 0,
        })
    }

    /// The `std_msgs/Header` both message types begin with: seconds, nanoseconds, frame id.
    fn header(&mut self) -> Result<(i32, u32, &'a str), String> {
        Ok((
            self.i32("header.stamp.sec")?,
            self.u32("header.stamp.nanosec")?,
            self.string("header.frame_id")?,
        ))
    }

    /// The next `n` bytes, or an error naming `field` if the payload ends first.
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "payload ends at byte {} while reading {field} ({n} bytes at byte {})",
                self.buf.len(),
                self.pos
            ));
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// Skips alignment padding, then takes an `N`-byte primitive.
    fn take_aligned<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        let pad = (N - self.pos % N) % N;
        self.take(pad, field)?;
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.take_aligned::<1>(field)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        self.take_aligned::<4>(field).map(u32::from_le_bytes)
    }

    fn i32(&mut self, field: &str) -> Result<i32, String> {
        self.take_aligned::<4>(field).map(i32::from_le_bytes)
    }

    fn string(&mut self, field: &str) -> Result<&'a str, String> {
        let len = self.u32(field)? as usize;
        let bytes = self.take(len, field)?;
        let Some((&0, text)) = bytes.split_last() else {
            return Err(format!("{field} is not a NUL-terminated CDR string"));
        };
        std::str::from_utf8(text).map_err(|e| format!("{field} is not UTF-8: {e}"))
    }

    fn bytes(&mut self, field: &str) -> Result<&'a [u8], String> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data: &[u8]) -> ImageMsg<'_> {
        ImageMsg {
            sec: 12,
            nanosec: 345_678_901,
            frame_id: FRAME_ID,
            height: 2,
            width: 3,
            encoding: "mono8",
            is_bigendian: 0,
            step: 4,
            data,
        }
    }

    #[test]
    fn layout_matches_the_cdr_alignment_rules() {
        let data = [1, 2, 3, 0, 4, 5, 6, 0];
        let msg = ImageMsg {
            frame_id: "ab",
            ..sample(&data)
        };
        let mut out = Vec::new();
        msg.encode(&mut out).unwrap();
        let expected: Vec<u8> = [
            &[0x00, 0x01, 0x00, 0x00][..], // encapsulation: CDR little-endian
            &12i32.to_le_bytes(),          // 0: sec
            &345_678_901u32.to_le_bytes(), // 4: nanosec
            &3u32.to_le_bytes(),           // 8: frame_id length with NUL
            b"ab\0",                       // 12..15
            &[0],                          // 15: pad to 16
            &2u32.to_le_bytes(),           // 16: height
            &3u32.to_le_bytes(),           // 20: width
            &6u32.to_le_bytes(),           // 24: encoding length with NUL
            b"mono8\0",                    // 28..34
            &[0],                          // 34: is_bigendian
            &[0],                          // 35: pad to 36
            &4u32.to_le_bytes(),           // 36: step
            &8u32.to_le_bytes(),           // 40: data length
            &data,                         // 44..52
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(ImageMsg::decode(&out).unwrap(), msg);
    }

    #[test]
    fn every_truncation_is_an_error_naming_a_field() {
        let data = [7u8; 8];
        let mut out = Vec::new();
        sample(&data).encode(&mut out).unwrap();
        for cut in 0..out.len() {
            let err = ImageMsg::decode(&out[..cut]).unwrap_err();
            assert!(
                err.contains("header") || err.contains("payload ends"),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn rejects_big_endian_and_unterminated_strings() {
        let data = [0u8; 8];
        let mut out = Vec::new();
        sample(&data).encode(&mut out).unwrap();
        let mut be = out.clone();
        be[1] = 0x00;
        assert!(ImageMsg::decode(&be).unwrap_err().contains("big-endian"));
        let mut no_nul = out.clone();
        // frame_id's NUL: after the 4-byte header, sec, nanosec, the length and the text.
        no_nul[4 + 12 + FRAME_ID.len()] = b'x';
        assert!(ImageMsg::decode(&no_nul).unwrap_err().contains("NUL"));
    }

    #[test]
    fn encoding_names_round_trip() {
        for f in PixelFormat::ALL {
            match encoding_name(f) {
                Some(name) => assert_eq!(format_from_encoding(name), Some(f)),
                None => assert!(f.is_compressed(), "{f:?} has no encoding"),
            }
        }
        assert_eq!(format_from_encoding("yuyv"), Some(PixelFormat::Yuyv));
        assert_eq!(format_from_encoding("yuv422"), Some(PixelFormat::Uyvy));
        assert_eq!(format_from_encoding("bgr8"), None);
        assert_eq!(format_from_encoding("jpeg"), None);
    }

    #[test]
    fn compressed_image_layout_and_round_trip() {
        let data = [0xFF, 0xD8, 0xFF, 0xD9, 7];
        let msg = CompressedImageMsg {
            sec: 3,
            nanosec: 5,
            frame_id: "ab",
            format: JPEG_FORMAT,
            data: &data,
        };
        let mut out = Vec::new();
        msg.encode(&mut out).unwrap();
        let expected: Vec<u8> = [
            &[0x00, 0x01, 0x00, 0x00][..], // encapsulation: CDR little-endian
            &3i32.to_le_bytes(),           // 0: sec
            &5u32.to_le_bytes(),           // 4: nanosec
            &3u32.to_le_bytes(),           // 8: frame_id length with NUL
            b"ab\0",                       // 12..15
            &[0],                          // 15: pad to 16
            &5u32.to_le_bytes(),           // 16: format length with NUL
            b"jpeg\0",                     // 20..25
            &[0, 0, 0],                    // 25: pad to 28
            &5u32.to_le_bytes(),           // 28: data length
            &data,                         // 32..37
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(CompressedImageMsg::decode(&out).unwrap(), msg);
        for cut in 0..out.len() {
            assert!(
                CompressedImageMsg::decode(&out[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }
}
