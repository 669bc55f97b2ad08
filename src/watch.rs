//! `echoview watch`: a terminal client of the daemon's label socket.
//!
//! It shows what a viewer at the cart would: the stable label large, this beat's label and
//! confidence, heart rate, latency and the daemon's health, redrawn with plain ANSI escapes
//! (no terminal library: it runs over any SSH session). With `--plain`, or when the output is
//! not a terminal, it prints one line per message instead, for logs and scripts. It reads the
//! same protocol as any other client (`docs/protocol.md`) and reconnects when the daemon
//! restarts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::daemon::protocol::{Hello, Message, StatusMsg, ViewMsg};

/// Why watching stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The terminal could not be written (closed by the reader).
    #[error("writing the display: {0}")]
    Output(#[source] std::io::Error),
}

/// Time between reconnection attempts.
const RETRY: Duration = Duration::from_secs(1);

/// What the client knows: the latest message of each type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchState {
    /// The daemon's greeting.
    pub hello: Option<Hello>,
    /// The latest beat.
    pub view: Option<ViewMsg>,
    /// The latest status.
    pub status: Option<StatusMsg>,
}

impl WatchState {
    /// Takes in one message.
    pub fn apply(&mut self, msg: Message) {
        match msg {
            Message::Hello(h) => {
                // A new connection: what the old daemon said no longer holds.
                *self = WatchState::default();
                self.hello = Some(h);
            }
            Message::View(v) => self.view = Some(v),
            Message::Status(s) => self.status = Some(*s),
        }
    }

    /// The screen, ANSI: clear, then the lines.
    pub fn screen(&self, socket: &Path) -> String {
        let mut s = String::from("\x1b[H\x1b[2J");
        let bold = |t: &str| format!("\x1b[1m{t}\x1b[0m");
        s += &format!("echoview watch - {}\n", socket.display());
        if let Some(h) = &self.hello {
            s += &format!(
                "model {} {} ({}) on {}\n",
                h.model.name,
                h.model.version,
                h.model.hash.get(..12).unwrap_or(&h.model.hash),
                h.engine
            );
        }
        s += "\n";
        match &self.view {
            Some(v) => {
                s += &format!("  VIEW   {}\n\n", bold(&v.stable));
                s += &format!(
                    "  beat {:<6} {} ({:.2})   gating {}   HR {}   latency {:.0} ms\n",
                    v.beat,
                    v.label,
                    v.confidence,
                    v.gating,
                    v.hr_bpm
                        .map_or("-".to_string(), |hr| format!("{hr:.0} bpm")),
                    v.latency_ms
                );
                let mut top: Vec<&(String, f32)> = v.probs.0.iter().collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (name, p) in top.into_iter().take(3) {
                    let bar = "#".repeat((p * 30.0).round() as usize);
                    s += &format!("    {name:<13}{bar:<30} {p:.2}\n");
                }
            }
            None => s += "  VIEW   (no beat yet)\n",
        }
        s += "\n";
        if let Some(st) = &self.status {
            s += &status_screen(st);
        }
        s
    }
}

/// One line for a message, for `--plain`.
pub fn plain_line(msg: &Message) -> String {
    match msg {
        Message::Hello(h) => format!(
            "hello protocol={} model={} {} ({}) engine={}",
            h.protocol, h.model.name, h.model.version, h.model.hash, h.engine
        ),
        Message::View(v) => format!(
            "view t={:.3} beat={} label={} stable={} confidence={:.2} gating={} hr_bpm={} \
             latency_ms={:.1}{}",
            v.t,
            v.beat,
            v.label,
            v.stable,
            v.confidence,
            v.gating,
            v.hr_bpm.map_or("-".to_string(), |hr| format!("{hr:.1}")),
            v.latency_ms,
            v.truth
                .as_ref()
                .map_or(String::new(), |t| format!(" truth={t}"))
        ),
        Message::Status(s) => status_line(s),
    }
}

/// The daemon's health on a few short lines, for the screen.
fn status_screen(s: &StatusMsg) -> String {
    let drops = s.drops.input + s.drops.beats + s.drops.published + s.drops.record;
    let errors = s.errors.engine + s.errors.source + s.errors.record + s.errors.ecg;
    let mut text = format!(
        "  daemon {}   video {} {:.1} fps   ECG {} {:.0}/s   gating {}\n",
        s.state,
        if s.video.up { "up" } else { "DOWN" },
        s.video.fps,
        s.ecg.quality,
        s.ecg.samples_per_s,
        s.gating
    );
    text += &format!(
        "  beats {} ({} unknown, {} time-gated)   drops {}   errors {}   clients {}   \
         recording {}\n",
        s.beats.classified,
        s.beats.unknown,
        s.beats.time_gated,
        drops,
        errors,
        s.clients,
        s.recording.state
    );
    if let Some(last) = &s.errors.last {
        text += &format!("  last error: {last}\n");
    }
    text
}

/// The daemon's health on one line.
fn status_line(s: &StatusMsg) -> String {
    let drops = s.drops.input + s.drops.beats + s.drops.published + s.drops.record;
    let errors = s.errors.engine + s.errors.source + s.errors.record + s.errors.ecg;
    let mut line = format!(
        "status {} video={}({:.1} fps) ecg={}({:.0}/s) gating={} beats={} unknown={} \
         time={} drops={} errors={} clients={} recording={}",
        s.state,
        if s.video.up { "up" } else { "down" },
        s.video.fps,
        s.ecg.quality,
        s.ecg.samples_per_s,
        s.gating,
        s.beats.classified,
        s.beats.unknown,
        s.beats.time_gated,
        drops,
        errors,
        s.clients,
        s.recording.state
    );
    if let Some(last) = &s.errors.last {
        line += &format!(" last_error={last:?}");
    }
    line
}

/// Watches the daemon at `socket`, writing to `out` until the output fails; reconnects
/// whenever the connection is lost.
pub fn watch(socket: &Path, plain: bool, mut out: impl Write) -> Result<(), WatchError> {
    let mut state = WatchState::default();
    let mut said_waiting = false;
    loop {
        let stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            Err(e) => {
                if !said_waiting {
                    writeln!(
                        out,
                        "cannot connect to {} ({e}); is `echoview run` running? retrying",
                        socket.display()
                    )
                    .and_then(|()| out.flush())
                    .map_err(WatchError::Output)?;
                    said_waiting = true;
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        said_waiting = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let text = match Message::from_line(&line) {
                Ok(Some(msg)) => {
                    let text = if plain {
                        plain_line(&msg) + "\n"
                    } else {
                        state.apply(msg);
                        state.screen(socket)
                    };
                    Some(text)
                }
                Ok(None) => None,
                Err(e) => Some(format!("{e}\n")),
            };
            if let Some(text) = text {
                out.write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(WatchError::Output)?;
            }
        }
        writeln!(out, "disconnected from {}; reconnecting", socket.display())
            .and_then(|()| out.flush())
            .map_err(WatchError::Output)?;
        std::thread::sleep(RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::protocol::{ModelInfo, Probs, StabilityInfo};

    fn view(beat: u64, label: &str) -> ViewMsg {
        ViewMsg {
            t: 2.0,
            start: 1.2,
            beat,
            label: label.into(),
            stable: "A4C".into(),
            confidence: 0.62,
            probs: Probs(vec![("PLAX".into(), 0.3), ("A4C".into(), 0.62)]),
            alpha: 0.5,
            gating: "ecg".into(),
            hr_bpm: Some(75.0),
            latency_ms: 420.0,
            inference_ms: 30.0,
            encoded_at_cut: 1,
            truth: Some("A4C".into()),
        }
    }

    #[test]
    fn the_screen_shows_stable_label_beat_and_heart_rate() {
        let mut state = WatchState::default();
        state.apply(Message::Hello(Hello {
            protocol: 1,
            daemon: "echoview 0".into(),
            model: ModelInfo {
                name: "demo".into(),
                version: "1".into(),
                hash: "0123456789abcdef".into(),
            },
            engine: "tract".into(),
            fallback: None,
            fallback_reason: None,
            labels: vec!["A4C".into(), "unknown".into()],
            frames_per_beat: 8,
            stability: StabilityInfo {
                agree_beats: 2,
                confident: 0.9,
                unknown_beats: 3,
            },
        }));
        state.apply(Message::View(view(3, "PLAX")));
        let screen = state.screen(Path::new("/run/x.sock"));
        assert!(
            screen.contains("model demo 1 (0123456789ab) on tract"),
            "{screen}"
        );
        assert!(screen.contains("VIEW   \x1b[1mA4C"), "{screen}");
        assert!(screen.contains("beat 3      PLAX (0.62)"), "{screen}");
        assert!(screen.contains("HR 75 bpm") && screen.contains("latency 420 ms"));
        let a4c = screen.find("A4C    ").unwrap();
        let plax = screen.find("PLAX    ").unwrap();
        assert!(a4c < plax, "most probable first: {screen}");
    }

    #[test]
    fn plain_lines_carry_the_fields() {
        let line = plain_line(&Message::View(view(9, "A4C")));
        assert_eq!(
            line,
            "view t=2.000 beat=9 label=A4C stable=A4C confidence=0.62 gating=ecg hr_bpm=75.0 \
             latency_ms=420.0 truth=A4C"
        );
    }
}
