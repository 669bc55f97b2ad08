//! A simulated scan written to a session file: what `echoview sim --out` does, and what tests
//! and benchmarks need as a realistic recording.

use std::path::Path;

use super::{SimConfig, SimError, SimEvent, Simulator};
use crate::session::{SessionError, SessionWriter};

/// Why a simulated session could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The simulation's settings are invalid.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The session file could not be written.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Records one simulator event the way a session carries it: a frame with the view it truly
/// shows, an ECG block, or a true R-peak.
pub fn write_event(writer: &mut SessionWriter, event: &SimEvent) -> Result<(), SessionError> {
    match event {
        SimEvent::Frame { frame, truth } => {
            writer.write_frame(frame)?;
            writer.write_truth_view(frame.t_ns, *truth)
        }
        SimEvent::Ecg(block) => writer.write_ecg(block),
        SimEvent::RPeak { t_ns, sample_index } => writer.write_truth_rpeak(*t_ns, *sample_index),
    }
}

/// Simulates `config` into a new session file at `path`.
pub fn record(config: SimConfig, path: &Path) -> Result<(), RecordError> {
    let simulator = Simulator::new(config)?;
    let mut writer = SessionWriter::create(path)?;
    for event in simulator {
        write_event(&mut writer, &event)?;
    }
    writer.finish()?;
    Ok(())
}
