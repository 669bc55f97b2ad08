//! Session files: everything one scan produced, on one clock, in one MCAP file.
//!
//! A session holds the captured video frames, the ECG sample blocks, the simulator's truth
//! (views and R-peaks) when there is a simulator, and the labels the pipeline published. One
//! file with one clock lets a session be replayed through the pipeline sample for sample, and
//! MCAP with standard encodings lets Foxglove open it as is. The format is described for
//! people in `docs/session-format.md`.
//!
//! [`SessionWriter`] records; [`SessionReader`] streams the events back in file order.

mod cdr;
mod error;
mod reader;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

pub use error::SessionError;
pub use reader::{SessionReader, SessionSummary};
pub use schema::FORMAT_VERSION;
pub use writer::{CHUNK_SIZE, SessionWriter};

use crate::media::{EcgBlock, Frame};
use crate::views::View;

/// One message of a session, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A video frame (`/video`); its `t_ns` is the message time.
    Frame(Frame),
    /// A block of ECG samples (`/ecg`); its `t0_ns` is the message time.
    Ecg(EcgBlock),
    /// The simulator's true view at a frame time (`/truth/view`).
    TruthView {
        /// The frame time it applies to, nanoseconds on the session clock.
        t_ns: u64,
        /// The view the simulator was showing.
        view: View,
    },
    /// A true R-peak from the simulator (`/truth/rpeak`).
    TruthRPeak {
        /// Time of the R-peak, nanoseconds on the session clock.
        t_ns: u64,
        /// Index of the ECG sample at the R-peak, in the numbering of [`EcgBlock::first_index`].
        sample_index: u64,
    },
    /// A label the pipeline published (`/labels`).
    Label {
        /// Time the label was published for, nanoseconds on the session clock.
        t_ns: u64,
        /// The label as published: a JSON object whose fields the publisher defines.
        value: serde_json::Value,
    },
}

impl SessionEvent {
    /// The event's time on the session clock (its MCAP log time).
    pub fn t_ns(&self) -> u64 {
        match self {
            SessionEvent::Frame(f) => f.t_ns,
            SessionEvent::Ecg(b) => b.t0_ns,
            SessionEvent::TruthView { t_ns, .. }
            | SessionEvent::TruthRPeak { t_ns, .. }
            | SessionEvent::Label { t_ns, .. } => *t_ns,
        }
    }
}
