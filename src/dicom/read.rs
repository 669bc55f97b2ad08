//! Opening a DICOM export and decoding its frames: the only part of [`super`] that touches
//! files and dicom-rs.
//!
//! Uncompressed pixel data is read straight from the dataset (which also covers Explicit VR
//! Big Endian and uncompressed YBR_FULL_422, which dicom-rs's own conversion gets wrong); RLE
//! is decoded by [`super::rle`]; JPEG and JPEG 2000 frames by dicom-pixeldata's codecs
//! (jpeg-decoder, openjp2), which already turn YCbCr into RGB.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntax, TransferSyntaxIndex, TransferSyntaxRegistry};

use super::DicomError;
use super::ecg::{EcgLead, HeartbeatSource, ecg_lead};
use super::pixels::{Colour, Layout, Palette, to_frame};
use super::region::{UsRegion, image_region};
use super::rle;
use super::timing::{FrameTimes, TimingAttributes, frame_times};
use crate::media::Frame;
use crate::preprocess::Rect;

/// A DICOM object in memory, with its file meta group.
type Object = dicom_object::FileDicomObject<InMemDicomObject>;

/// Where the `DICM` marker of a Part 10 file sits.
const MAGIC_OFFSET: usize = 128;

/// How a transfer syntax stores pixels, which decides who decodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Uncompressed little endian (implicit, explicit, or deflated as a whole dataset).
    Native,
    /// Uncompressed Explicit VR Big Endian.
    NativeBigEndian,
    /// JPEG baseline, extended or lossless.
    Jpeg,
    /// JPEG 2000, lossless or not.
    Jpeg2000,
    /// RLE Lossless.
    Rle,
}

/// The transfer syntaxes echoview decodes.
const SUPPORTED: [(&str, Encoding); 11] = [
    ("1.2.840.10008.1.2", Encoding::Native),
    ("1.2.840.10008.1.2.1", Encoding::Native),
    ("1.2.840.10008.1.2.1.99", Encoding::Native),
    ("1.2.840.10008.1.2.2", Encoding::NativeBigEndian),
    ("1.2.840.10008.1.2.4.50", Encoding::Jpeg),
    ("1.2.840.10008.1.2.4.51", Encoding::Jpeg),
    ("1.2.840.10008.1.2.4.57", Encoding::Jpeg),
    ("1.2.840.10008.1.2.4.70", Encoding::Jpeg),
    ("1.2.840.10008.1.2.4.90", Encoding::Jpeg2000),
    ("1.2.840.10008.1.2.4.91", Encoding::Jpeg2000),
    ("1.2.840.10008.1.2.5", Encoding::Rle),
];

/// What `echoview dicom info` shows and replay needs, gathered when the file is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct CineSummary {
    /// Number of Frames (0028,0008), 1 when absent.
    pub frames: u32,
    /// Rows (0028,0010).
    pub rows: u32,
    /// Columns (0028,0011).
    pub columns: u32,
    /// Photometric Interpretation (0028,0004) as written.
    pub photometric: String,
    /// Transfer syntax UID.
    pub transfer_syntax_uid: String,
    /// Transfer syntax name.
    pub transfer_syntax: String,
    /// Frame times on the session clock (the first frame at `frame_offset_ns`).
    pub timing: FrameTimes,
    /// Session-clock time of the first frame: 0 unless the ECG starts before it.
    pub frame_offset_ns: u64,
    /// Every item of the Sequence of Ultrasound Regions.
    pub regions: Vec<UsRegion>,
    /// The crop replay uses: the largest 2D region within the frame.
    pub image_region: Option<Rect>,
    /// Where heartbeats come from.
    pub heartbeat: HeartbeatSource,
    /// The ECG lead, when the source is [`HeartbeatSource::Ecg`].
    pub ecg: Option<EcgLead>,
    /// R-wave times in milliseconds from the first frame, when the file has them.
    pub r_wave_ms: Vec<f64>,
}

/// An opened cine: the dataset, its summary and how to decode its frames.
pub struct DicomCine {
    /// The file, for error messages.
    path: PathBuf,
    /// The dataset.
    object: Object,
    /// What it holds.
    summary: CineSummary,
    /// How frames are stored.
    encoding: Encoding,
    /// How decoded samples make pixels.
    layout: Layout,
}

impl std::fmt::Debug for DicomCine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomCine")
            .field("path", &self.path)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Whether `path` starts like a Part 10 DICOM file (`DICM` at byte 128). A bare dataset
/// without that header is recognised by [`DicomCine::open`] parsing it instead.
pub fn is_dicom(path: &Path) -> std::io::Result<bool> {
    let mut head = [0u8; MAGIC_OFFSET + 4];
    let mut file = std::fs::File::open(path)?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(&head[MAGIC_OFFSET..] == b"DICM")
}

impl DicomCine {
    /// Opens `path`, a Part 10 file or a bare little-endian dataset, and checks that it is an
    /// image echoview can decode and time.
    pub fn open(path: &Path) -> Result<DicomCine, DicomError> {
        let object = read_object(path)?;
        DicomCine::from_object(path, object)
    }

    /// What the file holds.
    pub fn summary(&self) -> &CineSummary {
        &self.summary
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frame `index` (from 0) as a [`Frame`] at its session-clock time.
    pub fn frame(&self, index: u32) -> Result<Frame, DicomError> {
        let decode_err = |reason: String| DicomError::Decode {
            path: self.path.clone(),
            frame: index,
            reason,
        };
        let t_ns = self
            .summary
            .timing
            .times_ns
            .get(index as usize)
            .map(|t| t + self.summary.frame_offset_ns)
            .ok_or_else(|| decode_err(format!("the file has {} frames", self.summary.frames)))?;
        let samples = self.samples(index).map_err(decode_err)?;
        to_frame(&self.layout, &samples, u64::from(index), t_ns)
            .map_err(|e| decode_err(e.to_string()))
    }

    /// The decoded samples of frame `index`, as [`to_frame`] reads them.
    fn samples(&self, index: u32) -> Result<Vec<u8>, String> {
        let pixel_data = self
            .object
            .get(tags::PIXEL_DATA)
            .ok_or_else(|| "Pixel Data (7FE0,0010) is missing".to_string())?;
        let frame_len = self.layout.frame_len();
        match self.encoding {
            Encoding::Native | Encoding::NativeBigEndian => {
                let big = self.encoding == Encoding::NativeBigEndian;
                let start = index as usize * frame_len;
                let bytes = pixel_data
                    .value()
                    .primitive()
                    .and_then(|p| native_bytes(p, self.layout.bits_allocated, big))
                    .ok_or_else(|| "Pixel Data holds no samples".to_string())?;
                bytes
                    .get(start..start + frame_len)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        format!(
                            "Pixel Data has {} bytes, frame {index} needs bytes {start}..{}",
                            bytes.len(),
                            start + frame_len
                        )
                    })
            }
            Encoding::Rle => {
                let fragments = match pixel_data.value() {
                    Value::PixelSequence(seq) => seq.fragments(),
                    _ => return Err("RLE Pixel Data is not encapsulated".into()),
                };
                let fragment = fragments.get(index as usize).ok_or_else(|| {
                    format!(
                        "{} RLE fragments for {} frames",
                        fragments.len(),
                        self.summary.frames
                    )
                })?;
                let pixels = self.summary.rows as usize * self.summary.columns as usize;
                rle::decode_frame(
                    fragment,
                    pixels,
                    usize::from(self.layout.samples_per_pixel),
                    usize::from(self.layout.bits_allocated / 8),
                )
                .map_err(|e| e.to_string())
            }
            Encoding::Jpeg | Encoding::Jpeg2000 => {
                // Third-party codecs on untrusted data: a panic in one becomes this frame's
                // error rather than the end of the replay.
                let decoded = catch_unwind(AssertUnwindSafe(|| {
                    self.object
                        .decode_pixel_data_frame(index)
                        .map(|d| d.data().to_vec())
                }))
                .map_err(|_| "the decoder failed on this frame's data".to_string())?;
                decoded.map_err(|e| e.to_string())
            }
        }
    }

    /// Checks and summarises a parsed object.
    fn from_object(path: &Path, object: Object) -> Result<DicomCine, DicomError> {
        let path_buf = path.to_path_buf();
        let bad = |attribute: &'static str, problem: String| DicomError::BadAttribute {
            path: path_buf.clone(),
            attribute,
            problem,
        };
        if object.get(tags::PIXEL_DATA).is_none() {
            return Err(DicomError::NotImage {
                path: path_buf,
                what: what_it_is(&object),
            });
        }
        let uid = object
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .trim();
        let ts_name = TransferSyntaxRegistry
            .get(uid)
            .map_or_else(|| "unknown".to_string(), |ts| ts.name().to_string());
        let Some(&(_, encoding)) = SUPPORTED.iter().find(|(u, _)| *u == uid) else {
            return Err(DicomError::UnsupportedTransferSyntax {
                path: path_buf,
                uid: uid.to_string(),
                name: ts_name,
            });
        };
        let uint = |tag, attribute: &'static str| -> Result<u32, DicomError> {
            object
                .get(tag)
                .ok_or_else(|| bad(attribute, "is missing".into()))?
                .to_int::<u32>()
                .map_err(|e| bad(attribute, format!("is not a number ({e})")))
        };
        let uint_or = |tag, default: u32| {
            object
                .get(tag)
                .and_then(|e| e.to_int::<u32>().ok())
                .unwrap_or(default)
        };
        let rows = uint(tags::ROWS, "Rows (0028,0010)")?;
        let columns = uint(tags::COLUMNS, "Columns (0028,0011)")?;
        let frames = uint_or(tags::NUMBER_OF_FRAMES, 1).max(1);
        let bits_allocated = uint(tags::BITS_ALLOCATED, "Bits Allocated (0028,0100)")?;
        let bits_stored = uint_or(tags::BITS_STORED, bits_allocated);
        let samples_per_pixel = uint_or(tags::SAMPLES_PER_PIXEL, 1);
        let photometric = text(&object, tags::PHOTOMETRIC_INTERPRETATION).ok_or_else(|| {
            bad(
                "Photometric Interpretation (0028,0004)",
                "is missing".into(),
            )
        })?;
        let colour = colour(&object, &photometric, encoding).map_err(|what| {
            DicomError::UnsupportedPixels {
                path: path_buf.clone(),
                what,
            }
        })?;
        let window = match (
            first_float(&object, tags::WINDOW_CENTER),
            first_float(&object, tags::WINDOW_WIDTH),
        ) {
            (Some(c), Some(w)) => Some((c, w)),
            _ => None,
        };
        let decoded_elsewhere = matches!(
            encoding,
            Encoding::Jpeg | Encoding::Jpeg2000 | Encoding::Rle
        );
        let layout = Layout {
            width: columns,
            height: rows,
            samples_per_pixel: u16::try_from(samples_per_pixel).unwrap_or(0),
            bits_allocated: u16::try_from(bits_allocated).unwrap_or(0),
            bits_stored: u16::try_from(bits_stored).unwrap_or(0),
            signed: uint_or(tags::PIXEL_REPRESENTATION, 0) == 1,
            // Codecs hand back pixel-interleaved samples whatever the attribute says.
            planar: !decoded_elsewhere && uint_or(tags::PLANAR_CONFIGURATION, 0) == 1,
            colour,
            window,
        };
        layout.check().map_err(|e| DicomError::UnsupportedPixels {
            path: path_buf.clone(),
            what: e.to_string(),
        })?;
        if rows > crate::jpeg::MAX_SIDE || columns > crate::jpeg::MAX_SIDE {
            return Err(DicomError::UnsupportedPixels {
                path: path_buf,
                what: format!(
                    "a {columns}x{rows} image (at most {} pixels per side)",
                    crate::jpeg::MAX_SIDE
                ),
            });
        }

        let attrs = TimingAttributes {
            frame_time_ms: first_float(&object, tags::FRAME_TIME),
            frame_time_vector_ms: floats(&object, tags::FRAME_TIME_VECTOR),
            cine_rate: first_float(&object, tags::CINE_RATE),
            pointer_is_vector: object
                .get(tags::FRAME_INCREMENT_POINTER)
                .and_then(|e| e.value().primitive())
                .is_some_and(|p| match p {
                    PrimitiveValue::Tags(t) => t.first() == Some(&tags::FRAME_TIME_VECTOR),
                    _ => false,
                }),
        };
        let timing = frame_times(frames, &attrs).map_err(|e| bad("frame timing", e.to_string()))?;

        let ecg = ecg_lead(&object).map_err(|e| bad("ECG", e.to_string()))?;
        let r_wave_ms = floats(&object, tags::R_WAVE_TIME_VECTOR).unwrap_or_default();
        let heartbeat = if ecg.is_some() {
            HeartbeatSource::Ecg
        } else if r_wave_ms.iter().filter(|t| t.is_finite()).count() >= 2 {
            HeartbeatSource::RWaveTimes
        } else {
            HeartbeatSource::Image
        };
        // The session clock starts at the earlier of the first frame and the first ECG sample.
        let origin_ms = ecg.as_ref().map_or(0.0, |l| l.offset_ms.min(0.0));
        let frame_offset_ns = (-origin_ms * 1e6).round() as u64;

        let regions = us_regions(&object);
        let image_region = image_region(&regions, columns, rows);
        Ok(DicomCine {
            path: path_buf,
            summary: CineSummary {
                frames,
                rows,
                columns,
                photometric,
                transfer_syntax_uid: uid.to_string(),
                transfer_syntax: ts_name,
                timing,
                frame_offset_ns,
                regions,
                image_region,
                heartbeat,
                ecg,
                r_wave_ms,
            },
            encoding,
            layout,
            object,
        })
    }

    /// The session-clock origin on the file's own time axis (milliseconds from the first
    /// frame): negative when the ECG starts before the first frame.
    pub fn origin_ms(&self) -> f64 {
        -(self.summary.frame_offset_ns as f64) / 1e6
    }
}

/// Reads a Part 10 file, or else a bare dataset in implicit or explicit VR little endian.
fn read_object(path: &Path) -> Result<Object, DicomError> {
    let io_err = |source| DicomError::Io {
        path: path.to_path_buf(),
        source,
    };
    let part10 = is_dicom(path).map_err(io_err)?;
    if part10 {
        let bytes = std::fs::read(path).map_err(io_err)?;
        let mut rest = &bytes[MAGIC_OFFSET..];
        meta_lengths_fit(rest.get(4..).unwrap_or_default(), bytes.len() as u64).map_err(|e| {
            DicomError::NotDicom {
                path: path.to_path_buf(),
                reason: format!("{e} in its Part 10 header: the file is damaged; export it again"),
            }
        })?;
        if let Ok(meta) = dicom_object::FileMetaTable::from_reader(&mut rest)
            && let Some(ts) = TransferSyntaxRegistry.get(meta.transfer_syntax())
        {
            lengths_fit(rest, ts, bytes.len() as u64).map_err(|e| DicomError::NotDicom {
                path: path.to_path_buf(),
                reason: format!("{e}: the file is damaged; export it again"),
            })?;
        }
        return OpenFileOptions::new()
            .open_file(path)
            .map_err(|e| DicomError::NotDicom {
                path: path.to_path_buf(),
                reason: format!("its Part 10 header is there but the dataset does not parse: {e}"),
            });
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    let mut last_error = String::from("no DICM marker at byte 128");
    for ts in [
        dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    ] {
        if let Err(e) = lengths_fit(&bytes, &ts, bytes.len() as u64) {
            last_error = format!("no DICM marker at byte 128, and as a bare dataset: {e}");
            continue;
        }
        match InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts) {
            // A parse of random bytes can "succeed" with garbage; require image attributes.
            Ok(obj) if obj.get(tags::SOP_CLASS_UID).is_some() || obj.get(tags::ROWS).is_some() => {
                let meta = FileMetaTableBuilder::new()
                    .transfer_syntax(ts.uid())
                    .media_storage_sop_class_uid(
                        text(&obj, tags::SOP_CLASS_UID)
                            .unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.3.1".into()),
                    )
                    .media_storage_sop_instance_uid(
                        text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_else(|| "2.25.0".into()),
                    );
                return obj.with_meta(meta).map_err(|e| DicomError::NotDicom {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
            Ok(_) => last_error = "no DICM marker at byte 128 and no image attributes".into(),
            Err(e) => {
                last_error = format!("no DICM marker at byte 128, and as a bare dataset: {e}")
            }
        }
    }
    Err(DicomError::NotDicom {
        path: path.to_path_buf(),
        reason: last_error,
    })
}

/// Whether every element and item of `dataset`, read in `ts`, declares a length within the
/// file (`file_len` bytes); the error names the first that does not.
///
/// dicom-object allocates (and zero-fills) each value at its declared length before reading
/// it, so one damaged length field in a small file makes it take up to 4 GB of memory, and a
/// bare dataset tried in the wrong VR encoding reads garbage lengths (found by fuzzing: a
/// 220-byte implicit-VR dataset tried as explicit VR took 770 MB, a damaged 7 KB file
/// 3.9 GB). The token reader stops at each header before reading its value, which is where
/// the length is checked. Anything else wrong is left to the real parse, which words it
/// better.
fn lengths_fit(dataset: &[u8], ts: &TransferSyntax, file_len: u64) -> Result<(), String> {
    use dicom_parser::dataset::{DataSetReader, DataToken};
    let Ok(tokens) = DataSetReader::new_with_ts(dataset, ts) else {
        return Ok(());
    };
    for token in tokens {
        let declared = match token {
            Ok(DataToken::ElementHeader(h)) => {
                h.len.get().map(|len| (format!("element {}", h.tag), len))
            }
            Ok(DataToken::SequenceStart { tag, len }) => {
                len.get().map(|len| (format!("sequence {tag}"), len))
            }
            Ok(DataToken::ItemStart { len }) => len.get().map(|len| ("an item".to_string(), len)),
            Ok(_) => None,
            Err(_) => return Ok(()),
        };
        if let Some((what, len)) = declared
            && u64::from(len) > file_len
        {
            return Err(format!(
                "{what} declares {len} bytes, more than the whole file ({file_len} bytes)"
            ));
        }
    }
    Ok(())
}

/// The group of the Part 10 file meta information elements, (0002,xxxx).
const META_GROUP: u16 = 0x0002;

/// Whether every element of the Part 10 file meta group at the start of `header` (the bytes
/// after `DICM`) declares a length within the file (`file_len` bytes).
///
/// dicom-object's meta header parser allocates each value at its declared length too, and
/// dicom-parser's token reader gives up on a damaged VR before the length, so the group is
/// walked here by hand (found by fuzzing: a 1.5 KB file whose header element, its VR bytes
/// damaged, declared 3.9 GB took 3.8 GB and 15 s; another, whose group length (0002,0000)
/// said 4 GB, 2.2 GB). The group is always explicit VR little endian; a VR that is not one of
/// the 2-byte-length VRs is read as the parser reads it, with a 4-byte length. The walk stops
/// where the group length says the group ends (or, without one, at the first element of
/// another group: a damaged tag inside the group is read on, as the parser reads it, found by
/// fuzzing too) or at a short read; anything else wrong is left to the real parse.
fn meta_lengths_fit(header: &[u8], file_len: u64) -> Result<(), String> {
    /// The VRs whose length is 2 bytes, straight after the VR, in explicit VR encoding.
    const SHORT_LENGTH_VRS: [&[u8; 2]; 21] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    let u16_at = |at: usize| {
        header
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let mut pos = 0usize;
    // Where the group length says the group ends: dicom-object reads every element up to
    // there, whatever its tag says, so the walk does too.
    let mut group_end: Option<usize> = None;
    while let (Some(group), Some(element)) = (u16_at(pos), u16_at(pos + 2)) {
        let inside_group_length = group_end.is_some_and(|end| pos < end);
        if group != META_GROUP && !inside_group_length {
            break;
        }
        let Some(vr) = header.get(pos + 4..pos + 6) else {
            break;
        };
        let (len, value_at) = if SHORT_LENGTH_VRS.iter().any(|short| &short[..] == vr) {
            match u16_at(pos + 6) {
                Some(len) => (u64::from(len), pos + 8),
                None => break,
            }
        } else {
            match header.get(pos + 8..pos + 12) {
                Some(b) => (
                    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    pos + 12,
                ),
                None => break,
            }
        };
        if len > file_len {
            return Err(format!(
                "element ({group:04X},{element:04X}) declares {len} bytes, more than the whole \
                 file ({file_len} bytes)"
            ));
        }
        // The group length's value is a length too: the meta parser reads that many bytes.
        if group == META_GROUP
            && element == 0
            && let Some(b) = header.get(value_at..value_at + 4)
        {
            let group_len = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if group_len > file_len {
                return Err(format!(
                    "the meta group length (0002,0000) is {group_len} bytes, more than the \
                     whole file ({file_len} bytes)"
                ));
            }
            // Both are at most the file's length here, so they fit in usize.
            group_end = Some(value_at + 4 + group_len as usize);
        }
        // `len` is at most the file's length here, so it fits in usize.
        pos = value_at + len as usize;
    }
    Ok(())
}

/// A non-image object in words, for [`DicomError::NotImage`]: the waveform classes a cart or
/// PACS exports beside cines by name, anything else by its SOP Class UID.
fn what_it_is(object: &Object) -> String {
    let uid = text(object, tags::SOP_CLASS_UID).unwrap_or_default();
    let known = [
        (
            uids::TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
            "a 12-lead ECG waveform object",
        ),
        (
            uids::GENERAL_ECG_WAVEFORM_STORAGE,
            "a general ECG waveform object",
        ),
        (
            uids::AMBULATORY_ECG_WAVEFORM_STORAGE,
            "an ambulatory ECG waveform object",
        ),
        (
            uids::HEMODYNAMIC_WAVEFORM_STORAGE,
            "a hemodynamic waveform object",
        ),
        (
            uids::BASIC_VOICE_AUDIO_WAVEFORM_STORAGE,
            "an audio waveform object",
        ),
    ];
    if let Some((_, what)) = known.iter().find(|(u, _)| *u == uid) {
        return (*what).to_string();
    }
    match (
        uid.is_empty(),
        object.get(tags::WAVEFORM_SEQUENCE).is_some(),
    ) {
        (_, true) => format!("a waveform object (SOP class {uid})"),
        (false, false) => format!("an object without pixel data (SOP class {uid})"),
        (true, false) => "an object without pixel data".into(),
    }
}

/// The photometric interpretation as a [`Colour`], given who decodes the pixels: JPEG and
/// JPEG 2000 codecs return RGB for every colour interpretation but JPEG 2000's YBR_FULL.
fn colour(object: &Object, photometric: &str, encoding: Encoding) -> Result<Colour, String> {
    let codec_rgb = matches!(encoding, Encoding::Jpeg | Encoding::Jpeg2000);
    match photometric {
        "MONOCHROME1" => Ok(Colour::Monochrome1),
        "MONOCHROME2" => Ok(Colour::Monochrome2),
        "RGB" => Ok(Colour::Rgb),
        "YBR_FULL" if encoding == Encoding::Jpeg => Ok(Colour::Rgb),
        "YBR_FULL" => Ok(Colour::YbrFull),
        "YBR_FULL_422" | "YBR_PARTIAL_420" | "YBR_ICT" | "YBR_RCT" if codec_rgb => Ok(Colour::Rgb),
        "YBR_FULL_422" if encoding != Encoding::Rle => Ok(Colour::YbrFull422),
        "PALETTE COLOR" => palette(object).map(Colour::Palette),
        other => Err(format!(
            "Photometric Interpretation {other:?} with {}",
            match encoding {
                Encoding::Rle => "RLE",
                Encoding::Native | Encoding::NativeBigEndian => "uncompressed pixel data",
                Encoding::Jpeg => "JPEG",
                Encoding::Jpeg2000 => "JPEG 2000",
            }
        )),
    }
}

/// The Palette Color Lookup Tables of a PALETTE COLOR image.
fn palette(object: &Object) -> Result<Palette, String> {
    if object
        .get(tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA)
        .is_some()
    {
        return Err("PALETTE COLOR with segmented lookup tables".into());
    }
    let descriptor = |tag| -> Option<[i64; 3]> {
        let v = object.get(tag)?.value().primitive()?;
        let values: Vec<i64> = match v {
            PrimitiveValue::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            PrimitiveValue::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            PrimitiveValue::U8(v) => v
                .chunks_exact(2)
                .map(|b| i64::from(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => other.to_multi_int::<i64>().ok()?,
        };
        values.get(..3)?.try_into().ok()
    };
    let d = descriptor(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR)
        .ok_or("PALETTE COLOR without a Red Palette Color Lookup Table Descriptor")?;
    let entries = if d[0] == 0 {
        65_536
    } else {
        d[0].max(0) as usize
    };
    let table = |tag| -> Option<Vec<u16>> {
        match object.get(tag)?.value().primitive()? {
            PrimitiveValue::U16(v) => Some(v.to_vec()),
            // OB, or OW read as bytes: 8-bit entries one per byte, else 16-bit words.
            PrimitiveValue::U8(v) if v.len() == entries => {
                Some(v.iter().map(|&x| x.into()).collect())
            }
            PrimitiveValue::U8(v) => Some(
                v.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            _ => None,
        }
    };
    let tables = [
        table(tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA),
        table(tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA),
        table(tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA),
    ];
    let [Some(r), Some(g), Some(b)] = tables else {
        return Err("PALETTE COLOR without all three lookup table data elements".into());
    };
    // 8-bit entries packed two per 16-bit word (OW) in little-endian order.
    let unpack = |t: Vec<u16>| -> Vec<u16> {
        if d[2] == 8 && t.len() * 2 == entries {
            t.iter()
                .flat_map(|w| w.to_le_bytes())
                .map(u16::from)
                .collect()
        } else {
            t
        }
    };
    Palette::new(d, [unpack(r), unpack(g), unpack(b)]).ok_or_else(|| {
        format!(
            "PALETTE COLOR tables that do not match their descriptor {:?} (8- or 16-bit entries)",
            d
        )
    })
}

/// The samples of uncompressed Pixel Data as bytes, 16-bit samples little-endian. dicom-rs
/// parses OW into native 16-bit words (swapping big-endian ones), so 8-bit samples in OW words
/// are put back in file order.
fn native_bytes(p: &PrimitiveValue, bits: u16, big_endian: bool) -> Option<Vec<u8>> {
    Some(match (p, bits) {
        (PrimitiveValue::U8(v), 16) if big_endian => {
            v.chunks_exact(2).flat_map(|b| [b[1], b[0]]).collect()
        }
        (PrimitiveValue::U8(v), _) => v.to_vec(),
        (PrimitiveValue::U16(v), 8) if big_endian => {
            v.iter().flat_map(|w| w.to_be_bytes()).collect()
        }
        (PrimitiveValue::U16(v), _) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
        (PrimitiveValue::I16(v), _) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
        _ => return None,
    })
}

/// Items of the Sequence of Ultrasound Regions that give all four corners.
fn us_regions(object: &Object) -> Vec<UsRegion> {
    let Some(items) = object
        .get(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let get = |tag| item.get(tag).and_then(|e| e.to_int::<u32>().ok());
            Some(UsRegion {
                spatial_format: get(tags::REGION_SPATIAL_FORMAT)
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(0),
                data_type: get(tags::REGION_DATA_TYPE)
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(0),
                min_x: get(tags::REGION_LOCATION_MIN_X0)?,
                min_y: get(tags::REGION_LOCATION_MIN_Y0)?,
                max_x: get(tags::REGION_LOCATION_MAX_X1)?,
                max_y: get(tags::REGION_LOCATION_MAX_Y1)?,
            })
        })
        .collect()
}

/// A text attribute, trimmed of DICOM padding.
fn text(object: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    object
        .get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
        .filter(|s| !s.is_empty())
}

/// The first value of a numeric attribute.
fn first_float(object: &InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    floats(object, tag)?.first().copied()
}

/// All values of a numeric attribute.
fn floats(object: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    object
        .get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| !v.is_empty())
}
