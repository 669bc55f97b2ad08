//! Set-up shared by the daemon's black-box tests (`tests/daemon.rs`, `tests/faults.rs`).

use std::path::{Path, PathBuf};

use echoview::sim::record::record;
use echoview::sim::{LeadOffStretch, ScanScript, SimConfig};
use echoview::views::View;

/// The bundled demo model.
pub fn demo_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

/// Writes `dir/session.mcap`: a simulated session of `beats` heartbeats each of PLAX and A4C
/// at 320x240, with truth, and the `lead_off` stretches.
pub fn session(dir: &Path, beats: u32, lead_off: Vec<LeadOffStretch>) -> PathBuf {
    let path = dir.join("session.mcap");
    let config = SimConfig {
        scan: ScanScript::from_views(&[View::Plax, View::A4c], beats),
        lead_off,
        ..SimConfig::default()
    };
    record(config, &path).unwrap();
    path
}
