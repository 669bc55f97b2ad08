//! Where a cine's heartbeats come from. An export may carry the ECG itself (a Waveform
//! Sequence (5400,0100) in the image object), only the cart's R-wave times (R Wave Time Vector
//! (0018,6060)), or nothing, in which case the image's own motion has to do.
//!
//! The ECG becomes [`EcgBlock`]s for the same QRS detector a live session runs; R-wave times
//! become beat boundaries marked [`crate::gate::Gating::Ecg`].

use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::media::EcgBlock;

/// Where the heartbeats of a cine come from, in the order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatSource {
    /// The ECG waveform recorded with the cine, run through the QRS detector.
    Ecg,
    /// The cart's R-wave times, used as beat boundaries.
    RWaveTimes,
    /// The image's periodic motion (no ECG in the export).
    Image,
}

impl HeartbeatSource {
    /// The name `echoview dicom info` prints.
    pub fn name(self) -> &'static str {
        match self {
            HeartbeatSource::Ecg => "ecg",
            HeartbeatSource::RWaveTimes => "r-wave times",
            HeartbeatSource::Image => "image",
        }
    }
}

/// ECG samples per block handed to the detector: a quarter second at 1 kHz, like a serial board.
const BLOCK_SAMPLES: usize = 250;

/// One ECG lead from a Waveform Sequence, in millivolts.
#[derive(Debug, Clone, PartialEq)]
pub struct EcgLead {
    /// The channel's label, e.g. "Lead II", for display.
    pub label: String,
    /// Sampling rate in Hz.
    pub fs_hz: f64,
    /// Time of the first sample relative to the first frame, in milliseconds (Multiplex Group
    /// Time Offset (0018,1068); 0 when absent).
    pub offset_ms: f64,
    /// Samples in millivolts.
    pub samples_mv: Vec<f32>,
}

impl EcgLead {
    /// The lead as blocks on the session clock, whose origin is `origin_ms` on the lead's
    /// time axis (the earliest of the first frame and the first ECG sample).
    pub fn blocks(&self, origin_ms: f64) -> Vec<EcgBlock> {
        let t0_ns = ((self.offset_ms - origin_ms) * 1e6).max(0.0).round() as u64;
        self.samples_mv
            .chunks(BLOCK_SAMPLES)
            .enumerate()
            .map(|(i, chunk)| {
                let first_index = (i * BLOCK_SAMPLES) as u64;
                EcgBlock {
                    first_index,
                    t0_ns: t0_ns + (first_index as f64 * 1e9 / self.fs_hz).round() as u64,
                    fs_hz: self.fs_hz,
                    samples_mv: chunk.to_vec(),
                    lead_off: false,
                }
            })
            .collect()
    }
}

/// Why a Waveform Sequence holds no usable ECG; the reader adds the file name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ECG Waveform Sequence (5400,0100): {0}")]
pub struct WaveformError(pub String);

/// The ECG lead to gate on from `object`'s Waveform Sequence: lead II when a channel says so
/// (the lead carts show under the image), else the first channel of the first group with
/// samples. `Ok(None)` when the object has no Waveform Sequence.
pub fn ecg_lead(object: &InMemDicomObject) -> Result<Option<EcgLead>, WaveformError> {
    let Some(items) = object.get(tags::WAVEFORM_SEQUENCE).and_then(|e| e.items()) else {
        return Ok(None);
    };
    let mut first_error = None;
    for item in items {
        match lead_of_group(item) {
            Ok(lead) => return Ok(Some(lead)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| WaveformError("the sequence is empty".into())))
}

/// The chosen lead of one multiplex group.
fn lead_of_group(item: &InMemDicomObject) -> Result<EcgLead, WaveformError> {
    let err = |s: &str| WaveformError(s.to_string());
    let int = |tag, name: &str| -> Result<u64, WaveformError> {
        item.get(tag)
            .and_then(|e| e.to_int::<u64>().ok())
            .ok_or_else(|| WaveformError(format!("{name} is missing")))
    };
    let channels = int(
        tags::NUMBER_OF_WAVEFORM_CHANNELS,
        "Number of Waveform Channels",
    )?;
    let samples = int(
        tags::NUMBER_OF_WAVEFORM_SAMPLES,
        "Number of Waveform Samples",
    )?;
    let fs_hz = item
        .get(tags::SAMPLING_FREQUENCY)
        .and_then(|e| e.to_float64().ok())
        .filter(|f| f.is_finite() && (50.0..=20_000.0).contains(f))
        .ok_or_else(|| err("Sampling Frequency is missing or outside 50..20000 Hz"))?;
    let bits = int(tags::WAVEFORM_BITS_ALLOCATED, "Waveform Bits Allocated")?;
    let interpretation = item
        .get(tags::WAVEFORM_SAMPLE_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if channels == 0 || samples == 0 {
        return Err(err("the group has no channels or no samples"));
    }
    let raw: Vec<i64> = match (
        item.get(tags::WAVEFORM_DATA)
            .and_then(|e| e.value().primitive()),
        bits,
        interpretation.as_str(),
    ) {
        (Some(PrimitiveValue::U16(v)), 16, "SS") => {
            v.iter().map(|&x| i64::from(x as i16)).collect()
        }
        (Some(PrimitiveValue::U16(v)), 16, "US") => v.iter().map(|&x| i64::from(x)).collect(),
        (Some(PrimitiveValue::I16(v)), 16, _) => v.iter().map(|&x| i64::from(x)).collect(),
        (Some(PrimitiveValue::U8(v)), 16, "SS" | "US") => v
            .chunks_exact(2)
            .map(|b| {
                let x = u16::from_le_bytes([b[0], b[1]]);
                if interpretation == "SS" {
                    i64::from(x as i16)
                } else {
                    i64::from(x)
                }
            })
            .collect(),
        (Some(PrimitiveValue::U8(v)), 8, "SB") => v.iter().map(|&x| i64::from(x as i8)).collect(),
        (Some(PrimitiveValue::U8(v)), 8, "UB") => v.iter().map(|&x| i64::from(x)).collect(),
        (None, _, _) => return Err(err("Waveform Data (5400,1010) is missing")),
        _ => {
            return Err(WaveformError(format!(
                "{bits}-bit {interpretation:?} samples are not supported (16-bit SS/US or 8-bit SB/UB are)"
            )));
        }
    };
    let (channels, samples) = (channels as usize, samples as usize);
    if raw.len() < channels.saturating_mul(samples) {
        return Err(WaveformError(format!(
            "Waveform Data holds {} values for {channels} channels of {samples} samples",
            raw.len()
        )));
    }
    let definitions = item
        .get(tags::CHANNEL_DEFINITION_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    let label_of = |def: &InMemDicomObject| -> String {
        def.get(tags::CHANNEL_SOURCE_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
            .and_then(|src| src.get(tags::CODE_MEANING))
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let chosen = definitions
        .iter()
        .take(channels)
        .position(|d| {
            let label = label_of(d).to_ascii_lowercase();
            label == "lead ii" || label == "ii" || label.ends_with(" ii")
        })
        .unwrap_or(0);
    let (label, scale_mv, baseline) = match definitions.get(chosen) {
        Some(def) => {
            let sensitivity = def
                .get(tags::CHANNEL_SENSITIVITY)
                .and_then(|e| e.to_float64().ok())
                .unwrap_or(1.0);
            let correction = def
                .get(tags::CHANNEL_SENSITIVITY_CORRECTION_FACTOR)
                .and_then(|e| e.to_float64().ok())
                .unwrap_or(1.0);
            let baseline = def
                .get(tags::CHANNEL_BASELINE)
                .and_then(|e| e.to_float64().ok())
                .unwrap_or(0.0);
            let unit = def
                .get(tags::CHANNEL_SENSITIVITY_UNITS_SEQUENCE)
                .and_then(|e| e.items())
                .and_then(|items| items.first())
                .and_then(|u| u.get(tags::CODE_VALUE))
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "uV".into());
            let to_mv = match unit.as_str() {
                "mV" => 1.0,
                "V" => 1000.0,
                _ => 0.001,
            };
            (label_of(def), sensitivity * correction * to_mv, baseline)
        }
        None => (String::new(), 0.001, 0.0),
    };
    if !(scale_mv.is_finite() && scale_mv != 0.0 && baseline.is_finite()) {
        return Err(err(
            "the channel sensitivity is not a finite non-zero number",
        ));
    }
    let offset_ms = item
        .get(tags::MULTIPLEX_GROUP_TIME_OFFSET)
        .and_then(|e| e.to_float64().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(0.0);
    let samples_mv = raw
        .iter()
        .skip(chosen)
        .step_by(channels)
        .take(samples)
        .map(|&v| ((v as f64 + baseline) * scale_mv) as f32)
        .collect();
    Ok(EcgLead {
        label,
        fs_hz,
        offset_ms,
        samples_mv,
    })
}

/// R-wave times (milliseconds from the first frame) as boundaries on the session clock whose
/// origin is `origin_ms`: sorted, duplicates and non-finite values dropped.
pub fn r_wave_boundaries(times_ms: &[f64], origin_ms: f64) -> Vec<u64> {
    let mut out: Vec<u64> = times_ms
        .iter()
        .filter(|t| t.is_finite() && **t >= origin_ms)
        .map(|t| ((t - origin_ms) * 1e6).round() as u64)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_blocks_continue_indices_and_times() {
        let lead = EcgLead {
            label: "Lead II".into(),
            fs_hz: 500.0,
            offset_ms: -100.0,
            samples_mv: vec![0.0; 600],
        };
        let blocks = lead.blocks(-100.0);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].t0_ns, 0);
        assert_eq!(blocks[1].first_index, 250);
        assert_eq!(blocks[1].t0_ns, 500_000_000);
        assert_eq!(blocks[2].samples_mv.len(), 100);
    }

    #[test]
    fn r_wave_times_are_sorted_and_shifted() {
        assert_eq!(
            r_wave_boundaries(&[900.0, 100.0, f64::NAN, 100.0, -50.0], -50.0),
            vec![0, 150_000_000, 950_000_000]
        );
    }
}
