//! Fault injection against the real daemon (`echoview run` as a child process, its real
//! socket, real recording): misbehaving clients, signals during inference, damaged session
//! files, bad model bundles, ECG faults, a full disk, and the local interface's security
//! (peer credentials, no network listener, config files others can write).
//!
//! Each test checks what the status says, that the daemon recovers, and that nothing recorded
//! is lost: every label a client was sent is in the recording, and the recording reads back.
//! The results are tabulated in docs/reliability.md.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{demo_model, session};
use echoview::daemon::protocol::{Message, StatusMsg, ViewMsg};
use echoview::session::{SessionEvent, SessionReader};
use echoview::sim::{LeadOffMode, LeadOffStretch};

/// A daemon under test: the child, its folder, socket and recording folder.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    record: PathBuf,
}

impl Daemon {
    /// Starts `echoview run --play SESSION` with `config` text and `extra` flags, recording,
    /// and waits for its socket.
    fn start(dir: &Path, session: &Path, config: &str, extra: &[&str]) -> Daemon {
        let socket = dir.join("labels.sock");
        let record = dir.join("rec");
        let config_path = dir.join("echoview.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_echoview"));
        // SAFETY: close_range only marks descriptors close-on-exec; it allocates nothing and
        // is async-signal-safe, as a pre_exec hook must be.
        unsafe {
            // serialport's pty pairs are opened without O_CLOEXEC: a daemon inheriting a
            // board's master end would keep the pty alive after the board "unplugs" it.
            command.pre_exec(|| {
                libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32);
                Ok(())
            });
        }
        let child = command
            .arg("run")
            .args(["--config", config_path.to_str().unwrap()])
            .args(["--play", session.to_str().unwrap()])
            .args(["--socket", socket.to_str().unwrap()])
            .args(["--record", record.to_str().unwrap()])
            .args(["--model", demo_model().to_str().unwrap()])
            .args(["--engine", "tract"])
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            dir: dir.to_path_buf(),
            socket,
            record,
        };
        let start = Instant::now();
        while UnixStream::connect(&daemon.socket).is_err() {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", daemon.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no socket: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status and how long the stop took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.signal(libc::SIGTERM);
        let sent = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("no exit within 10 s of SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every label recorded, as `beat` numbers, reading every file of the recording to its
    /// end (which must be clean: a recording that does not read back is data lost).
    fn recorded_beats(&self) -> (Vec<u64>, u64) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.record)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let (mut beats, mut frames) = (Vec::new(), 0);
        for file in &files {
            for event in SessionReader::open(file).unwrap() {
                match event.unwrap_or_else(|e| panic!("{}: {e}", file.display())) {
                    SessionEvent::Label { value, .. } => {
                        beats.push(value["beat"].as_u64().unwrap())
                    }
                    SessionEvent::Frame(_) => frames += 1,
                    _ => {}
                }
            }
        }
        (beats, frames)
    }

    /// Checks that every label in `sent` (what a client received) is in the recording, since
    /// a label sent but not recorded is data lost, and returns how many frames were recorded.
    fn assert_every_label_recorded(&self, sent: &[ViewMsg]) -> u64 {
        let (recorded, frames) = self.recorded_beats();
        let missing: Vec<u64> = sent
            .iter()
            .map(|v| v.beat)
            .filter(|b| !recorded.contains(b))
            .collect();
        assert!(
            missing.is_empty(),
            "labels sent but not recorded: {missing:?}"
        );
        frames
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that reads and keeps what it got.
struct Client {
    lines: std::io::Lines<BufReader<UnixStream>>,
    views: Vec<ViewMsg>,
    statuses: Vec<StatusMsg>,
    /// How many views had arrived when each status did, to tell which came before a fault.
    views_at_status: Vec<usize>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            lines: BufReader::new(stream).lines(),
            views: Vec::new(),
            statuses: Vec::new(),
            views_at_status: Vec::new(),
        }
    }

    fn read(&mut self) {
        let line = self.lines.next().expect("connection closed").unwrap();
        match Message::from_line(&line).unwrap() {
            Some(Message::View(v)) => self.views.push(v),
            Some(Message::Status(s)) => {
                self.statuses.push(*s);
                self.views_at_status.push(self.views.len());
            }
            _ => {}
        }
    }

    /// Reads until `done` holds; the time it took.
    fn read_until(&mut self, within: Duration, done: impl Fn(&Client) -> bool) -> Duration {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < within, "timed out after {within:?}");
            self.read();
        }
        start.elapsed()
    }

    fn status(&self) -> &StatusMsg {
        self.statuses.last().expect("a status")
    }
}

/// Sockets of process `pid`, as the inode numbers of its `socket:[N]` descriptors.
fn socket_inodes(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect()
}

/// Inodes of the network (IPv4/IPv6 TCP, UDP, raw) sockets in `pid`'s network namespace.
fn network_inodes(pid: i32) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.push(inode.to_string());
            }
        }
    }
    inodes
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn strangers_are_refused_nothing_listens_on_the_network_and_loose_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Let any user reach the socket, so the credential check (not the file mode) is tested.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let session = session(dir, 2, Vec::new());
    let mut daemon = Daemon::start(dir, &session, "[socket]\nmode = \"0666\"\n", &["--loop"]);
    let mut root = Client::connect(&daemon.socket);
    root.read_until(Duration::from_secs(20), |c| !c.statuses.is_empty());

    // No network sockets: every socket the daemon holds is a Unix one.
    let ours = socket_inodes(daemon.pid());
    assert!(!ours.is_empty(), "the daemon holds its listening socket");
    let net = network_inodes(daemon.pid());
    let exposed: Vec<_> = ours.iter().filter(|i| net.contains(i)).collect();
    assert!(exposed.is_empty(), "network sockets {exposed:?}");

    if is_root() {
        // A process of user nobody connects (the mode lets it) and must get nothing.
        let mut stranger = Command::new(env!("CARGO_BIN_EXE_echoview"))
            .args([
                "watch",
                "--plain",
                "--socket",
                daemon.socket.to_str().unwrap(),
            ])
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        root.read_until(Duration::from_secs(20), |c| {
            c.statuses
                .last()
                .is_some_and(|s| s.errors.clients_refused >= 1)
        });
        stranger.kill().unwrap();
        let mut seen = String::new();
        stranger
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut seen)
            .unwrap();
        stranger.wait().unwrap();
        assert!(!seen.contains("beat") && !seen.contains("PLAX"), "{seen}");
        assert!(
            daemon.log().contains("refused a client: uid 65534"),
            "{}",
            daemon.log()
        );
        assert!(
            root.status().clients >= 1,
            "the root client is still served"
        );
    } else {
        eprintln!("not root: the refusal of another user is not exercised");
    }
    let (exit, _) = daemon.terminate();
    assert!(exit.success());

    // A config file others can write is refused, naming the file and the fix.
    let loose = dir.join("loose.toml");
    std::fs::write(&loose, "[socket]\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
        .args(["run", "--config", loose.to_str().unwrap()])
        .args(["--play", session.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(loose.to_str().unwrap()) && err.contains("chmod go-w"),
        "{err}"
    );
}

#[test]
fn crowds_garbage_stalled_clients_and_signals_lose_no_recorded_label() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let session = session(dir, 3, Vec::new());
    let mut daemon = Daemon::start(
        dir,
        &session,
        "[socket]\nmax_clients = 256\n[record]\nflush_s = 0.5\n",
        &["--loop"],
    );
    let mut a = Client::connect(&daemon.socket);
    a.read_until(Duration::from_secs(30), |c| c.views.len() >= 2);

    // A client that never reads, and one sending garbage past the input limit.
    let _stalled = UnixStream::connect(&daemon.socket).unwrap();
    let mut garbage = UnixStream::connect(&daemon.socket).unwrap();
    garbage
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let noise: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // The daemon hangs up once past the limit, so the write may fail part way: that is the
    // point.
    let _ = garbage.write_all(&noise);
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    // EOF, or a reset because the daemon hung up with bytes unread; a timeout means still on.
    let closed = match garbage.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the garbage sender was disconnected");

    // 200 clients at once.
    let burst = Instant::now();
    let crowd: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&daemon.socket).unwrap())
        .collect();
    let connected = burst.elapsed();
    let waited = a.read_until(Duration::from_secs(10), |c| {
        c.statuses.last().is_some_and(|s| s.clients >= 202)
    });
    // Every one of them gets hello.
    for c in crowd.iter().take(200) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut first = String::new();
        BufReader::new(c).read_line(&mut first).unwrap();
        assert!(first.contains("\"type\":\"hello\""), "{first}");
    }
    drop(crowd);
    let views_before = a.views.len();
    a.read_until(Duration::from_secs(20), |c| {
        c.views.len() >= views_before + 2
    });
    eprintln!("200 clients connected in {connected:?}; status showed them {waited:?} later");

    // SIGHUP during inference: logged, ignored, labels keep coming.
    daemon.signal(libc::SIGHUP);
    let views_before = a.views.len();
    let hup = a.read_until(Duration::from_secs(20), |c| {
        c.views.len() >= views_before + 2
    });
    assert!(daemon.alive(), "SIGHUP killed the daemon");
    assert!(daemon.log().contains("SIGHUP ignored"), "{}", daemon.log());
    eprintln!("after SIGHUP, two more labels in {hup:?}");

    let status = a.status().clone();
    assert_eq!(status.drops.record, 0, "{status:?}");
    assert_eq!(status.errors.record, 0, "{status:?}");
    assert_eq!(status.recording.state, "on");

    // SIGTERM during inference: a clean stop, and every label sent is in the recording.
    let (exit, took) = daemon.terminate();
    assert!(exit.success(), "{exit}: {}", daemon.log());
    eprintln!("SIGTERM to exit: {took:?}");
    let frames = daemon.assert_every_label_recorded(&a.views);
    assert!(frames > 0);
}

#[test]
fn damaged_session_files_play_what_is_intact_and_the_daemon_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let whole = std::fs::read(session(dir, 3, Vec::new())).unwrap();
    // Cut short (a recorder that lost power) and corrupted in the middle (a bad sector).
    let cut = dir.join("cut.mcap");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let corrupt = dir.join("corrupt.mcap");
    let mut bytes = whole.clone();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    for (name, file) in [("cut", &cut), ("corrupt", &corrupt)] {
        let sub = dir.join(name);
        std::fs::create_dir(&sub).unwrap();
        let mut daemon = Daemon::start(&sub, file, "", &[]);
        let mut c = Client::connect(&daemon.socket);
        let took = c.read_until(Duration::from_secs(40), |c| {
            c.statuses
                .last()
                .is_some_and(|s| s.video.state != "open" && s.video.frames > 0)
        });
        let status = c.status().clone();
        eprintln!(
            "{name}: {} frames, {} labels, video {} ({:?}), errors.source {}, after {took:?}",
            status.video.frames,
            c.views.len(),
            status.video.state,
            status.video.error,
            status.errors.source
        );
        assert!(daemon.alive(), "{}", daemon.log());
        c.read_until(Duration::from_secs(5), |c| c.statuses.len() >= 2);
        let (exit, _) = daemon.terminate();
        assert!(exit.success());
        daemon.assert_every_label_recorded(&c.views);
    }
}

#[test]
fn bundles_with_a_bad_hash_or_wrong_shapes_are_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let session = session(dir, 1, Vec::new());
    let manifest = std::fs::read_to_string(demo_model().join("manifest.toml")).unwrap();
    let bundle = |name: &str, manifest: &str| {
        let b = dir.join(name);
        std::fs::create_dir(&b).unwrap();
        for f in ["encoder.onnx", "head.onnx", "reference.json"] {
            std::os::unix::fs::symlink(demo_model().join(f), b.join(f)).unwrap();
        }
        std::fs::write(b.join("manifest.toml"), manifest).unwrap();
        b
    };
    let bad_hash = bundle(
        "bad-hash",
        &manifest.replace("sha256 = \"acc39ede", "sha256 = \"bcc39ede"),
    );
    let bad_shape = bundle(
        "bad-shape",
        &manifest.replace("feature_dim = 1408", "feature_dim = 1024"),
    );
    for (model, expect) in [(&bad_hash, "sha256"), (&bad_shape, "1024")] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
            .args(["run", "--play", session.to_str().unwrap()])
            .args(["--socket", dir.join("s.sock").to_str().unwrap()])
            .args(["--model", model.to_str().unwrap(), "--engine", "tract"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "{}: refused in {:?}: {}",
            model.display(),
            started.elapsed(),
            err.trim()
        );
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!dir.join("s.sock").exists(), "no socket was left behind");
    }
}

#[test]
fn ecg_lead_off_saturation_and_a_full_disk_are_reported_and_classifying_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let faults = vec![
        LeadOffStretch {
            start_s: 3.0,
            duration_s: 3.0,
            mode: LeadOffMode::Flat,
        },
        LeadOffStretch {
            start_s: 9.0,
            duration_s: 3.0,
            mode: LeadOffMode::Railed,
        },
        // Leads on, the signal swamped by a motion-artefact burst.
        LeadOffStretch {
            start_s: 15.0,
            duration_s: 3.0,
            mode: LeadOffMode::Noise,
        },
    ];
    let session = session(dir, 13, faults);
    // A disk "full" from the start: the free-space floor is above any real disk's free space.
    let mut daemon = Daemon::start(dir, &session, "[record]\nmin_free_mb = 1000000000\n", &[]);
    let mut c = Client::connect(&daemon.socket);
    // Each fault (flat lead-off, then railed saturation): the status leaves "good" ECG, and
    // ECG gating comes back after it.
    c.read_until(Duration::from_secs(40), |c| {
        c.statuses
            .last()
            .is_some_and(|s| s.ecg.quality == "good" && s.gating == "ecg")
    });
    // Flat lead-off: the status leaves "good" ECG, and ECG gating comes back after it.
    c.read_until(Duration::from_secs(40), |c| {
        c.statuses.last().is_some_and(|s| s.ecg.quality != "good")
    });
    let bad = c.status().clone();
    let recovered = c.read_until(Duration::from_secs(40), |c| {
        c.statuses
            .last()
            .is_some_and(|s| s.ecg.quality == "good" && s.gating == "ecg")
    });
    eprintln!(
        "lead-off (flat): ecg quality {}, gating {}, time-gated beats {}; ECG gating back \
         {recovered:?} after the first bad status",
        bad.ecg.quality, bad.gating, bad.beats.time_gated
    );
    // Saturation (railed), then the noise burst, to the end of the file: what the status
    // says over time.
    c.read_until(Duration::from_secs(40), |c| {
        c.statuses.last().is_some_and(|s| s.video.state != "open")
    });
    let mut timeline: Vec<(String, String)> = Vec::new();
    for s in &c.statuses {
        let now = (s.ecg.quality.clone(), s.gating.clone());
        if timeline.last() != Some(&now) {
            timeline.push(now);
        }
    }
    eprintln!("ecg quality / gating over the file: {timeline:?}");
    // Each of the three faults is its own bad stretch; the burst, with the leads on, is
    // judged by the signal alone: "poor", and its beats are cut by time, not by its "R-peaks".
    let episodes = timeline
        .windows(2)
        .filter(|w| w[0].0 == "good" && w[1].0 != "good")
        .count();
    assert!(
        episodes >= 3,
        "flat, railed and noise each reported: {timeline:?}"
    );
    assert!(
        timeline.contains(&("poor".to_string(), "time".to_string())),
        "the noise burst is poor ECG, time-gated: {timeline:?}"
    );
    assert!(!c.views.is_empty(), "labels kept coming");
    let status = c.status().clone();
    assert_eq!(status.recording.state, "stopped", "{:?}", status.recording);
    assert!(status.recording.reason.is_some());
    assert!(daemon.alive());
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
}

/// Resident memory (kB), open descriptors and threads of process `pid`.
fn usage(pid: i32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (field("VmRSS:"), fds, field("Threads:"))
}

/// The soak's length in seconds: `ECHOVIEW_SOAK_S` for the documented long run, else short.
fn soak_seconds() -> u64 {
    std::env::var("ECHOVIEW_SOAK_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

/// The soak's playback speed (`--speed`): `ECHOVIEW_SOAK_SPEED`, else 8, so a short run
/// covers many heartbeats and many reopenings of the looping file.
fn soak_speed() -> String {
    std::env::var("ECHOVIEW_SOAK_SPEED").unwrap_or_else(|_| "8".to_string())
}

#[test]
fn soak_looping_playback_with_clients_churning_does_not_grow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let session = session(dir, 2, Vec::new());
    let speed = soak_speed();
    let mut daemon = Daemon::start(
        dir,
        &session,
        "[record]\nflush_s = 0.5\nrotate_minutes = 1.0\n",
        &["--loop", "--speed", &speed],
    );
    let mut reader = Client::connect(&daemon.socket);
    reader.read_until(Duration::from_secs(30), |c| !c.views.is_empty());
    let total = Duration::from_secs(soak_seconds());
    let warm_up = total / 4;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut churn = Vec::new();
    while started.elapsed() < total {
        // Clients come and go all the time, as viewers on a cart do.
        churn.push(UnixStream::connect(&daemon.socket).unwrap());
        if churn.len() > 5 {
            churn.remove(0);
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            reader.read();
        }
        samples.push((started.elapsed().as_secs(), usage(daemon.pid())));
    }
    for (t, (rss, fds, threads)) in &samples {
        eprintln!("soak t={t:>4} s  rss {rss:>7} kB  fds {fds:>3}  threads {threads:>3}");
    }
    let status = reader.status().clone();
    eprintln!(
        "soak at speed {speed}: {} s, {} labels read, {} frames, beats {:?}, drops {:?}",
        total.as_secs(),
        reader.views.len(),
        status.video.frames,
        status.beats,
        status.drops
    );
    let after: Vec<_> = samples
        .iter()
        .filter(|(t, _)| *t >= warm_up.as_secs())
        .map(|(_, u)| *u)
        .collect();
    let (rss0, fds0, threads0) = after[0];
    let (rss_max, fds_max, threads_max) = after
        .iter()
        .fold((0, 0, 0), |m, u| (m.0.max(u.0), m.1.max(u.1), m.2.max(u.2)));
    // Descriptors and threads: flat (a recording rotation briefly holds one more file).
    assert!(fds_max <= fds0 + 2, "fds grew from {fds0} to {fds_max}");
    assert!(
        threads_max <= threads0 + 1,
        "threads grew from {threads0} to {threads_max}"
    );
    // Memory: allocator noise only, well below one leaked frame per beat.
    assert!(
        rss_max <= rss0 + rss0 / 10 + 8192,
        "rss grew from {rss0} to {rss_max} kB"
    );
    let status = reader.status().clone();
    assert_eq!(status.errors.record, 0, "{status:?}");
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    daemon.assert_every_label_recorded(&reader.views);
}

/// A tmpfs of `size` mounted on `dir` for the test's life, if this process may mount.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_while_recording_keeps_what_was_written_and_recovers_when_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let session = session(dir, 3, Vec::new());
    // The recording folder is a 3 MB filesystem: about a second of 320x240 video.
    let Some(disk) = Tmpfs::mount(&dir.join("rec"), "3m") else {
        eprintln!("cannot mount a tmpfs here (not root?): the full-disk test is skipped");
        return;
    };
    let mut daemon = Daemon::start(
        dir,
        &session,
        "[record]\nflush_s = 0.5\nmin_free_mb = 0\n",
        &["--loop"],
    );
    let mut c = Client::connect(&daemon.socket);
    c.read_until(Duration::from_secs(40), |c| {
        c.statuses.last().is_some_and(|s| s.recording.state == "on")
    });
    c.read_until(Duration::from_secs(40), |c| {
        c.statuses.last().is_some_and(|s| s.recording.state != "on")
    });
    let full = c.status().clone();
    eprintln!("disk full: recording {:?}", full.recording);
    let labels_when_full = c.views.len();
    c.read_until(Duration::from_secs(30), |c| {
        c.views.len() >= labels_when_full + 2
    });
    assert!(daemon.alive(), "{}", daemon.log());
    // Free space: recording resumes by itself.
    disk.resize("256m");
    let resumed = c.read_until(Duration::from_secs(30), |c| {
        c.statuses.last().is_some_and(|s| s.recording.state == "on")
    });
    eprintln!("recording on again {resumed:?} after space was freed");
    let views_before = c.views.len();
    c.read_until(Duration::from_secs(30), |c| {
        c.views.len() >= views_before + 2
    });
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    // Every file reads back: the one cut by the full disk up to the cut, the new one whole.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&daemon.record)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut labels = Vec::new();
    for file in &files {
        let Ok(reader) = SessionReader::open(file) else {
            eprintln!(
                "{}: unreadable (cut before its header was complete)",
                file.display()
            );
            continue;
        };
        for event in reader {
            match event {
                Ok(SessionEvent::Label { value, .. }) => {
                    labels.push(value["beat"].as_u64().unwrap())
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}: intact up to: {e}", file.display());
                    break;
                }
            }
        }
    }
    eprintln!(
        "{} files, {} labels recorded, {} sent",
        files.len(),
        labels.len(),
        c.views.len()
    );
    // Labels sent a second (two flushes) or more before the disk filled are all recorded;
    // those sent while it was full are not (that is the fault), and neither may be the last
    // half second of buffered data before it.
    let first_full = c
        .statuses
        .iter()
        .position(|s| s.recording.state == "failed")
        .unwrap();
    let safe = c.views_at_status[first_full.saturating_sub(2)];
    let before: Vec<u64> = c.views[..safe].iter().map(|v| v.beat).collect();
    eprintln!(
        "{} of {} labels sent over a second before the disk filled are recorded",
        before.iter().filter(|b| labels.contains(b)).count(),
        before.len()
    );
    assert!(
        before.iter().all(|b| labels.contains(b)),
        "labels before the fault lost"
    );
    let after: Vec<u64> = c.views[views_before..].iter().map(|v| v.beat).collect();
    assert!(
        after.iter().all(|b| labels.contains(b)),
        "labels after recovery lost"
    );
    drop(disk);
}

/// An ECG board on a pseudo-terminal sending `blocks` in real time from a thread; dropping it
/// is pulling the cable (the pty disappears).
struct PtyBoard {
    device: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PtyBoard {
    fn start(blocks: Vec<echoview::media::EcgBlock>) -> PtyBoard {
        use echoview::serial::emulator::WireFormat;
        use echoview::serial::{Emulator, EmulatorConfig, SampleWidth};
        let format = WireFormat::Binary {
            width: SampleWidth::I16,
        };
        let mut emulator = Emulator::open_pty(EmulatorConfig::new(format)).unwrap();
        let device = emulator.device().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for block in &blocks {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                // A board keeps sampling while nobody reads its port: what cannot be written
                // is lost, as on a real UART.
                let _ = emulator.send(block);
            }
        });
        PtyBoard {
            device,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PtyBoard {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Points the symlink `link` at `target`, atomically (as a udev rule re-creates
/// /dev/echoview-ecg for a replugged board).
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[test]
fn serial_ecg_unplugged_and_replugged_mid_beat_recovers_and_records_every_label() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let session = session(dir, 12, Vec::new());
    let blocks: Vec<_> = SessionReader::open(&session)
        .unwrap()
        .filter_map(|e| match e.unwrap() {
            SessionEvent::Ecg(b) => Some(b),
            _ => None,
        })
        .collect();
    let link = dir.join("echoview-ecg");
    let board = PtyBoard::start(blocks.clone());
    point(&link, &board.device);
    let mut daemon = Daemon::start(
        dir,
        &session,
        "[record]\nflush_s = 0.5\n",
        &["--ecg", link.to_str().unwrap()],
    );
    let mut c = Client::connect(&daemon.socket);
    c.read_until(Duration::from_secs(40), |c| {
        c.views.len() >= 2 && c.statuses.last().is_some_and(|s| s.gating == "ecg")
    });
    // Pull the cable (at an arbitrary point of a beat), leave it out 3 s, plug in a board
    // that continues the signal.
    eprintln!("ECG-gated labels flowing: {:?}", c.status().ecg);
    let sent_before = c.views.len();
    drop(board);
    c.read_until(Duration::from_secs(20), |c| {
        c.statuses
            .last()
            .is_some_and(|s| !s.ecg.up || s.gating != "ecg")
    });
    let unplugged = c.status().clone();
    eprintln!("unplug seen: {:?}", unplugged.ecg);
    std::thread::sleep(Duration::from_secs(3));
    let board = PtyBoard::start(blocks[blocks.len() / 2..].to_vec());
    point(&link, &board.device);
    let replugged = Instant::now();
    let waited = Instant::now();
    while !c
        .statuses
        .last()
        .is_some_and(|s| s.ecg.up && s.gating == "ecg")
    {
        assert!(
            waited.elapsed() < Duration::from_secs(40),
            "no ECG gating after replugging: {:?}\n{}",
            c.status(),
            daemon.log()
        );
        c.read();
    }
    let recovery = replugged.elapsed();
    eprintln!("replugged: {:?}", c.status().ecg);
    let views = c.views.len();
    c.read_until(Duration::from_secs(20), |c| c.views.len() >= views + 2);
    let status = c.status().clone();
    eprintln!(
        "unplugged: ecg up {} state {} gating {} ({:?}); ECG gating back {recovery:?} after \
         replugging; reconnects seen: errors.source {}",
        unplugged.ecg.up,
        unplugged.ecg.state,
        unplugged.gating,
        unplugged.ecg.error,
        status.errors.source
    );
    assert!(c.views.len() > sent_before, "labels kept coming");
    drop(board);
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
    daemon.assert_every_label_recorded(&c.views);
}

/// Rewrites the session `from` into `to` through the session writer, with `frame` deciding
/// what becomes of each frame: kept, replaced, or dropped (`None`). ECG and R-peak truth are
/// kept; a view truth goes with its frame.
fn rewrite_session(
    from: &Path,
    to: &Path,
    mut frame: impl FnMut(echoview::media::Frame) -> Option<echoview::media::Frame>,
) {
    let reader = SessionReader::open(from).unwrap();
    let metadata: std::collections::BTreeMap<String, String> = reader
        .metadata()
        .iter()
        .filter(|(k, _)| *k != "format_version" && *k != "writer")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut writer = echoview::session::SessionWriter::create(to).unwrap();
    writer.write_metadata(&metadata).unwrap();
    let mut kept_frames = std::collections::HashSet::new();
    for event in reader {
        match event.unwrap() {
            SessionEvent::Frame(f) => {
                let t_ns = f.t_ns;
                if let Some(f) = frame(f) {
                    writer.write_frame(&f).unwrap();
                    kept_frames.insert(t_ns);
                }
            }
            SessionEvent::Ecg(b) => writer.write_ecg(&b).unwrap(),
            SessionEvent::TruthView { t_ns, view } if kept_frames.contains(&t_ns) => {
                writer.write_truth_view(t_ns, view).unwrap()
            }
            SessionEvent::TruthRPeak { t_ns, sample_index } => {
                writer.write_truth_rpeak(t_ns, sample_index).unwrap()
            }
            _ => {}
        }
    }
    writer.finish().unwrap();
}

/// Copies the MCAP file `from` to `to` record by record, cutting the last `cut` bytes of
/// pixels off the `/video` messages whose sequence number is in `seqs`, with the CDR length
/// adjusted: frames whose byte count does not match their size, inside an otherwise valid
/// file (the session writer refuses to write such frames, so this goes below it).
fn cut_frame_pixels(from: &Path, to: &Path, seqs: &[u32], cut: usize) {
    let bytes = std::fs::read(from).unwrap();
    let mut writer =
        mcap::Writer::new(std::io::BufWriter::new(std::fs::File::create(to).unwrap())).unwrap();
    for record in mcap::read::LinearReader::new(&bytes).unwrap() {
        if let mcap::records::Record::Metadata(m) = record.unwrap() {
            writer.write_metadata(&m).unwrap();
        }
    }
    let mut cut_done = 0;
    for message in mcap::MessageStream::new(&bytes).unwrap() {
        let mut message = message.unwrap();
        if message.channel.topic == "/video" && seqs.contains(&message.sequence) {
            // The pixels are the message's last field: a u32 length, then the bytes.
            let mut data = message.data.into_owned();
            let len_at = data.len() - 4 - data.len().min(320 * 240);
            let len = u32::from_le_bytes(data[len_at..len_at + 4].try_into().unwrap()) as usize;
            assert_eq!(
                len_at + 4 + len,
                data.len(),
                "pixels are not the last field"
            );
            data[len_at..len_at + 4].copy_from_slice(&((len - cut) as u32).to_le_bytes());
            data.truncate(data.len() - cut);
            message.data = std::borrow::Cow::Owned(data);
            cut_done += 1;
        }
        writer.write(&message).unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(cut_done, seqs.len(), "not every frame to cut was found");
}

/// A view message's beat: its start, end (session seconds) and number.
fn beat_span(v: &ViewMsg) -> (f64, f64, u64) {
    (v.start, v.t, v.beat)
}

#[test]
fn a_video_stall_mid_session_is_reported_and_labels_resume_then_the_end_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let whole = session(dir, 8, Vec::new());
    // The grabber stops sending for 4 s from t = 6 s (ECG goes on), then sends again.
    let (stall_from, stall_to) = (6_000_000_000u64, 10_000_000_000u64);
    let stalled = dir.join("stalled.mcap");
    rewrite_session(&whole, &stalled, |f| {
        (f.t_ns < stall_from || f.t_ns >= stall_to).then_some(f)
    });
    let mut daemon = Daemon::start(dir, &stalled, "[record]\nflush_s = 0.5\n", &[]);
    let mut c = Client::connect(&daemon.socket);
    // Labels before the stall.
    c.read_until(Duration::from_secs(40), |c| !c.views.is_empty());
    // The stall, as the status shows it.
    let frames_before = c.status().video.frames;
    c.read_until(Duration::from_secs(20), |c| {
        c.statuses.last().is_some_and(|s| !s.video.up && s.ecg.up)
    });
    let during = c.status().clone();
    let stall_seen = Instant::now();
    eprintln!(
        "stall: state {}, video up {} state {} fps {}, ecg up {} quality {}, gating {}",
        during.state,
        during.video.up,
        during.video.state,
        during.video.fps,
        during.ecg.up,
        during.ecg.quality,
        during.gating
    );
    assert_eq!(during.state, "waiting", "{during:?}");
    assert!(daemon.alive());
    // Video back: up again, and labels for beats after the stall.
    c.read_until(Duration::from_secs(20), |c| {
        c.statuses.last().is_some_and(|s| s.video.up)
    });
    let back = Instant::now();
    let stall_to_s = stall_to as f64 / 1e9;
    let took = c.read_until(Duration::from_secs(30), |c| {
        c.views.iter().any(|v| v.start >= stall_to_s)
    });
    let first_after = c
        .views
        .iter()
        .find(|v| v.start >= stall_to_s)
        .map(beat_span)
        .unwrap();
    eprintln!(
        "video down for {:.1} s of wall time as seen by the status (stall 4.0 s); first label \
         after it: beat {:?}, {:.1} s after the status showed video up ({took:?} of reading)",
        (back - stall_seen).as_secs_f64(),
        first_after,
        back.elapsed().as_secs_f64()
    );
    assert!(c.status().video.frames > frames_before);
    // The end of the file: reported, and the daemon keeps serving.
    c.read_until(Duration::from_secs(40), |c| {
        c.statuses.last().is_some_and(|s| s.video.state == "ended")
    });
    let end = c.status().clone();
    eprintln!(
        "end of file: video {} (up {}), ecg {}, state {}, errors.source {}",
        end.video.state, end.video.up, end.ecg.state, end.state, end.errors.source
    );
    assert_eq!(end.errors.source, 0, "{end:?}");
    let n = c.statuses.len();
    c.read_until(Duration::from_secs(5), |c| c.statuses.len() >= n + 2);
    assert!(daemon.alive(), "{}", daemon.log());
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    daemon.assert_every_label_recorded(&c.views);
}

#[test]
fn truncated_and_wrongly_sized_frames_inside_a_valid_file_cost_one_frame_each() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let whole = session(dir, 4, Vec::new());
    // Every 40th frame becomes a Motion-JPEG frame cut short in transfer (its headers intact).
    let jpeg =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg/grey_33x17.jpg"))
            .unwrap();
    let info = echoview::jpeg::info(&jpeg).unwrap();
    let mut truncated = 0u64;
    let with_jpegs = dir.join("with_jpegs.mcap");
    rewrite_session(&whole, &with_jpegs, |f| {
        if f.seq % 40 != 20 {
            return Some(f);
        }
        truncated += 1;
        Some(echoview::media::Frame {
            width: info.width,
            height: info.height,
            stride: 0,
            format: echoview::media::PixelFormat::Mjpeg,
            data: jpeg[..jpeg.len() * 2 / 3].to_vec(),
            ..f
        })
    });
    // And three frames whose pixels are a row short of their size.
    let bad = dir.join("bad_frames.mcap");
    let cut_seqs: Vec<u32> = vec![31, 95, 150];
    cut_frame_pixels(&with_jpegs, &bad, &cut_seqs, 320);
    let expected_bad = truncated + cut_seqs.len() as u64;

    let mut daemon = Daemon::start(dir, &bad, "[record]\nflush_s = 0.5\n", &[]);
    let mut c = Client::connect(&daemon.socket);
    let took = c.read_until(Duration::from_secs(90), |c| {
        c.statuses.last().is_some_and(|s| s.video.state == "ended")
    });
    let n = c.statuses.len();
    c.read_until(Duration::from_secs(5), |c| c.statuses.len() > n);
    let status = c.status().clone();
    eprintln!(
        "bad frames: {expected_bad} in the file ({truncated} JPEGs cut short, {} a row short); \
         status errors.frames {}, errors.source {}, frames {}, labels {}, skipped {:?}, \
         video {} after {took:?}; last error: {:?}",
        cut_seqs.len(),
        status.errors.frames,
        status.errors.source,
        status.video.frames,
        c.views.len(),
        status.beats.skipped,
        status.video.state,
        status.errors.last
    );
    assert_eq!(status.errors.frames, expected_bad, "{status:?}");
    assert_eq!(
        status.errors.source, 0,
        "one bad frame must not end the file"
    );
    assert!(
        status
            .errors
            .last
            .as_deref()
            .is_some_and(|e| e.contains("malformed frame"))
    );
    assert!(
        !status.beats.skipped.contains_key("unusable_frames"),
        "a beat was lost to a bad frame: {:?}",
        status.beats.skipped
    );
    // Every good frame played: the file's frames less the bad ones.
    let good = SessionReader::open(&whole)
        .unwrap()
        .filter(|e| matches!(e, Ok(SessionEvent::Frame(_))))
        .count() as u64
        - expected_bad;
    assert_eq!(status.video.frames, good);
    assert!(c.views.len() >= 6, "labels kept coming: {}", c.views.len());
    assert!(daemon.alive());
    let (exit, _) = daemon.terminate();
    assert!(exit.success());
    let frames = daemon.assert_every_label_recorded(&c.views);
    assert_eq!(frames, good, "every good frame recorded");
}
