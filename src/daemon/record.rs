//! Session recording: the live session as rotating MCAP files that `echoview replay` reads.
//!
//! Everything the pipeline saw goes in (frames, ECG, the source's truth, if any) together with
//! every `view` message as published (on `/labels`), so a recording replays through the same
//! pipeline and shows what the sonographer was shown. A new file starts every
//! `rotate_minutes` or `rotate_mb`; the current chunk is flushed every `flush_s`, so a crash
//! loses at most that much. Below `min_free_mb` of free disk the recorder finishes its file and
//! stops (classification goes on, the status says why) until 10% more than the floor is free.
//!
//! The recorder runs on its own thread: disk stalls never reach the pipeline, which drops
//! (and counts) what the recorder's queue cannot take.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::session::{SessionError, SessionWriter};

use super::config::RecordConfig;
use super::protocol::RecordingStatus;
use super::source::SourceItem;

/// How often free space is checked.
const DISK_CHECK: Duration = Duration::from_secs(5);
/// After a failed file, how long before trying a new one.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why recording failed (classification is never affected).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The folder could not be created or its free space read.
    #[error("recording folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The session file could not be created or written.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// One thing to record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordMsg {
    /// A frame, ECG block or truth label from a source.
    Item(SourceItem),
    /// A published `view` message, at the beat's end time.
    Label {
        /// The beat's end, session clock.
        t_ns: u64,
        /// The message as published.
        value: serde_json::Value,
    },
}

/// Reads the free bytes of the file system holding a folder (replaceable in tests).
pub type FreeSpace = Box<dyn Fn(&Path) -> std::io::Result<u64> + Send>;

/// The file being written.
struct OpenFile {
    /// The writer.
    writer: SessionWriter,
    /// When it was started.
    opened: Instant,
    /// When it was last flushed.
    flushed: Instant,
    /// The last label time written: labels must not go back in time within a file, and a
    /// time-gated beat may end before the ECG beat published just before it.
    last_label_ns: Option<u64>,
}

/// Whether the recorder is writing.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Writing, or ready to open a file at the next message.
    On,
    /// Free disk is below the floor.
    Stopped(String),
    /// The last file failed; a new one is tried after the instant.
    Failed(String, Instant),
}

/// The recorder. See the module documentation.
pub struct Recorder {
    /// Where files go.
    dir: PathBuf,
    /// Rotation, flushing and the disk floor.
    config: RecordConfig,
    /// Written into every file: source, model, daemon.
    metadata: BTreeMap<String, String>,
    /// Free-space probe.
    free: FreeSpace,
    /// The file being written.
    file: Option<OpenFile>,
    /// Writing or not, and why.
    state: State,
    /// Files started.
    files: u64,
    /// The latest file's name, kept for the status after it is finished.
    last_path: Option<PathBuf>,
    /// The latest free-space reading.
    free_bytes: Option<u64>,
    /// When free space was last read.
    checked: Option<Instant>,
}

impl Recorder {
    /// A recorder writing into `config.dir` (which must be set) with `metadata` in every
    /// file; `free` reads free space.
    pub fn new(
        dir: PathBuf,
        config: RecordConfig,
        metadata: BTreeMap<String, String>,
        free: FreeSpace,
    ) -> Recorder {
        Recorder {
            dir,
            config,
            metadata,
            free,
            file: None,
            state: State::On,
            files: 0,
            last_path: None,
            free_bytes: None,
            checked: None,
        }
    }

    /// The state for the status message.
    pub fn status(&self) -> RecordingStatus {
        let (state, reason) = match &self.state {
            State::On => ("on", None),
            State::Stopped(why) => ("stopped", Some(why.clone())),
            State::Failed(why, _) => ("failed", Some(why.clone())),
        };
        RecordingStatus {
            state: state.into(),
            file: self
                .file
                .as_ref()
                .map(|f| f.writer.path())
                .or(self.last_path.as_deref())
                .map(|p| p.display().to_string()),
            files: self.files,
            free_mb: self.free_bytes.map(|b| b / 1_000_000),
            reason,
        }
    }

    /// Records one message, opening a file if none is open. Messages that arrive while
    /// stopped or failed are not recorded.
    pub fn write(&mut self, msg: RecordMsg, now: Instant) -> Result<(), RecordError> {
        match &self.state {
            State::Stopped(_) => return Ok(()),
            State::Failed(_, retry) if now < *retry => return Ok(()),
            _ => {}
        }
        if self.file.is_none()
            && let Err(e) = self.start_file(now)
        {
            self.state = State::Failed(e.to_string(), now + RETRY_AFTER);
            return Err(e);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let result = match msg {
            RecordMsg::Item(SourceItem::Frame(f)) => file.writer.write_frame(&f),
            RecordMsg::Item(SourceItem::Ecg(b)) => file.writer.write_ecg(&b),
            RecordMsg::Item(SourceItem::Truth { t_ns, view }) => {
                file.writer.write_truth_view(t_ns, view)
            }
            RecordMsg::Label { t_ns, value } => {
                let t = file.last_label_ns.map_or(t_ns, |last| last.max(t_ns));
                file.last_label_ns = Some(t);
                file.writer.write_label(t, &value)
            }
        };
        match result {
            Ok(()) => Ok(()),
            // One message the writer refuses (out of order) leaves the file good.
            Err(e @ SessionError::InvalidInput { .. }) => Err(e.into()),
            Err(e) => {
                self.file = None;
                self.state = State::Failed(e.to_string(), now + RETRY_AFTER);
                Err(e.into())
            }
        }
    }

    /// Housekeeping, called often: flushes, rotates, and watches the disk.
    pub fn tick(&mut self, now: Instant) -> Result<(), RecordError> {
        self.check_disk(now, false)?;
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if now.duration_since(file.flushed) >= Duration::from_secs_f64(self.config.flush_s) {
            file.flushed = now;
            if let Err(e) = file.writer.flush() {
                self.file = None;
                self.state = State::Failed(e.to_string(), now + RETRY_AFTER);
                return Err(e.into());
            }
            let size = std::fs::metadata(file.writer.path()).map_or(0, |m| m.len());
            let age = now.duration_since(file.opened);
            if size >= self.config.rotate_mb * 1_000_000
                || age >= Duration::from_secs_f64(self.config.rotate_minutes * 60.0)
            {
                // The next message opens the next file.
                self.close()?;
            }
        }
        Ok(())
    }

    /// Opens a file unless the disk is below the floor.
    fn start_file(&mut self, now: Instant) -> Result<(), RecordError> {
        self.check_disk(now, true)?;
        if matches!(self.state, State::Stopped(_)) {
            return Ok(());
        }
        self.open(now)?;
        self.state = State::On;
        Ok(())
    }

    /// Finishes the current file (summary, index, sync).
    pub fn finish(mut self) -> Result<(), RecordError> {
        self.close()
    }

    /// Finishes the current file, if any.
    fn close(&mut self) -> Result<(), RecordError> {
        match self.file.take() {
            Some(file) => Ok(file.writer.finish()?),
            None => Ok(()),
        }
    }

    /// Reads free space when due (or `now_anyway`), stopping below the floor and resuming
    /// above it plus 10%.
    fn check_disk(&mut self, now: Instant, now_anyway: bool) -> Result<(), RecordError> {
        let due = self
            .checked
            .is_none_or(|t| now.duration_since(t) >= DISK_CHECK);
        if !due && !now_anyway {
            return Ok(());
        }
        self.checked = Some(now);
        std::fs::create_dir_all(&self.dir).map_err(|source| RecordError::Folder {
            path: self.dir.clone(),
            source,
        })?;
        let free = (self.free)(&self.dir).map_err(|source| RecordError::Folder {
            path: self.dir.clone(),
            source,
        })?;
        self.free_bytes = Some(free);
        let floor = self.config.min_free_mb * 1_000_000;
        match self.state {
            State::Stopped(_) if free >= floor + floor / 10 => self.state = State::On,
            State::On | State::Failed(..) if free < floor => {
                self.state = State::Stopped(format!(
                    "{} MB free in {}, below the floor of {} MB",
                    free / 1_000_000,
                    self.dir.display(),
                    self.config.min_free_mb
                ));
                self.close()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts a new file named after the UTC time and a counter.
    fn open(&mut self, now: Instant) -> Result<(), RecordError> {
        let stamp = utc_stamp(SystemTime::now());
        let mut n = self.files;
        let writer = loop {
            let path = self.dir.join(format!("echoview-{stamp}-{n:04}.mcap"));
            match SessionWriter::create(&path) {
                Ok(w) => break w,
                Err(SessionError::Create { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists
                        && n < self.files + 100 =>
                {
                    n += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.files += 1;
        let mut writer = writer;
        let mut metadata = self.metadata.clone();
        metadata.insert("recording.part".into(), self.files.to_string());
        writer.write_metadata(&metadata)?;
        self.last_path = Some(writer.path().to_path_buf());
        self.file = Some(OpenFile {
            writer,
            opened: now,
            flushed: now,
            last_label_ns: None,
        });
        Ok(())
    }
}

/// `YYYYMMDDTHHMMSSZ` for `t`, so recordings sort by when they were made.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Frame, PixelFormat};
    use crate::session::{SessionEvent, SessionReader};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn frame(seq: u64) -> RecordMsg {
        RecordMsg::Item(SourceItem::Frame(Frame {
            seq,
            t_ns: seq * 33_000_000,
            width: 320,
            height: 240,
            stride: 320,
            format: PixelFormat::Grey8,
            // Noise, which does not compress, so files grow as real video does.
            data: {
                let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                (0..320 * 240)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 56) as u8
                    })
                    .collect()
            },
        }))
    }

    fn config(rotate_mb: u64, min_free_mb: u64) -> RecordConfig {
        RecordConfig {
            dir: None,
            rotate_minutes: 10.0,
            rotate_mb,
            min_free_mb,
            flush_s: 0.1,
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_164_799); // 2024-02-28 23:59:59
        assert_eq!(utc_stamp(t), "20240228T235959Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_200); // 2024-03-01 (leap year)
        assert_eq!(utc_stamp(t), "20240301T000000Z");
    }

    #[test]
    fn rotates_by_size_and_every_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::new(
            dir.path().into(),
            config(1, 1),
            BTreeMap::from([("source".into(), "test".into())]),
            Box::new(|_| Ok(u64::MAX)),
        );
        let start = Instant::now();
        for seq in 0..60 {
            let now = start + Duration::from_millis(200 * seq);
            rec.write(frame(seq), now).unwrap();
            if seq % 10 == 0 {
                let label = serde_json::json!({"type": "view", "beat": seq});
                // Labels may come out of time order; the file keeps them ordered.
                rec.write(
                    RecordMsg::Label {
                        t_ns: 1_000_000_000 - seq,
                        value: label,
                    },
                    now,
                )
                .unwrap();
            }
            rec.tick(now).unwrap();
        }
        assert_eq!(rec.status().state, "on");
        rec.finish().unwrap();
        let paths = files(dir.path());
        assert!(paths.len() >= 2, "{paths:?}");
        let (mut frames, mut labels) = (0, 0);
        for path in &paths {
            let reader = SessionReader::open(path).unwrap();
            assert_eq!(
                reader.metadata().get("source").map(String::as_str),
                Some("test")
            );
            for event in reader {
                match event.unwrap() {
                    SessionEvent::Frame(_) => frames += 1,
                    SessionEvent::Label { value, .. } => {
                        assert_eq!(value["type"], "view");
                        labels += 1;
                    }
                    _ => {}
                }
            }
        }
        assert_eq!((frames, labels), (60, 6));
    }

    #[test]
    fn stops_below_the_disk_floor_and_resumes_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let free = Arc::new(AtomicU64::new(500_000_000));
        let probe = free.clone();
        let mut rec = Recorder::new(
            dir.path().into(),
            config(1024, 100),
            BTreeMap::new(),
            Box::new(move |_| Ok(probe.load(Ordering::Relaxed))),
        );
        let start = Instant::now();
        rec.write(frame(0), start).unwrap();
        assert_eq!(rec.status().state, "on");
        free.store(50_000_000, Ordering::Relaxed);
        let later = start + DISK_CHECK;
        rec.tick(later).unwrap();
        let status = rec.status();
        assert_eq!(status.state, "stopped");
        assert!(status.reason.unwrap().contains("below the floor of 100 MB"));
        assert_eq!(status.free_mb, Some(50));
        rec.write(frame(1), later).unwrap();
        // Just above the floor is not enough to resume (hysteresis) ...
        free.store(105_000_000, Ordering::Relaxed);
        rec.tick(later + DISK_CHECK).unwrap();
        assert_eq!(rec.status().state, "stopped");
        // ... 10% above is.
        free.store(200_000_000, Ordering::Relaxed);
        rec.tick(later + 2 * DISK_CHECK).unwrap();
        assert_eq!(rec.status().state, "on");
        rec.write(frame(2), later + 2 * DISK_CHECK).unwrap();
        rec.finish().unwrap();
        let paths = files(dir.path());
        assert_eq!(paths.len(), 2, "one file before the stop, one after");
        let counts: Vec<usize> = paths
            .iter()
            .map(|p| SessionReader::open(p).unwrap().count())
            .collect();
        assert_eq!(counts, vec![1, 1], "frame 1 was not recorded");
    }

    #[test]
    fn an_unwritable_folder_fails_without_panicking_and_retries_later() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let mut rec = Recorder::new(
            blocker.join("sub"),
            config(1024, 1),
            BTreeMap::new(),
            Box::new(|_| Ok(u64::MAX)),
        );
        let now = Instant::now();
        let err = rec.write(frame(0), now).unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
        assert_eq!(rec.status().state, "failed");
        // Until the retry time, messages are dropped quietly ...
        assert!(rec.write(frame(1), now + Duration::from_secs(1)).is_ok());
        // ... then a new file is tried.
        assert!(rec.write(frame(2), now + RETRY_AFTER).is_err());
    }
}
