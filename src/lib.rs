//! echoview: ECG-gated echocardiography view classification for an ultrasound cart.
//!
//! The data path runs one stage per module:
//! sources ([`sim`], [`session`], [`dicom`] exports, [`serial`], [`capture`]) -> [`ecg`] (QRS, quality) -> [`gate`] (heartbeats; [`beats`]
//! holds the two together with the frame history) ->
//! [`preprocess`] -> [`engine`] (tract) -> [`classify`] (feature cache, head, reject) ->
//! sinks ([`replay`]'s JSON lines, session recording). [`pipeline`] strings the stages
//! together; [`bundle`] loads and verifies the model they run.

pub mod agreement;
pub mod batch;
pub mod beats;
pub mod bench;
pub mod bundle;
pub mod capture;
pub mod classify;
pub mod cli;
pub mod clips;
pub mod daemon;
pub mod dicom;
pub mod doctor;
pub mod ecg;
pub mod engine;
pub mod eval;
pub mod gate;
pub mod imagefeed;
pub mod imagegate;
pub mod jpeg;
pub mod media;
pub mod model_store;
pub mod pipeline;
pub mod preprocess;
pub mod recording;
pub mod replay;
pub mod resample;
pub mod selftest;
pub mod serial;
pub mod session;
pub mod sim;
pub mod version;
pub mod views;
pub mod watch;
