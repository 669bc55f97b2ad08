//! Every TensorRT fallback path that can run without TensorRT or a GPU: each must end on
//! tract with the right typed reason, and the pipeline must still produce labels.
//!
//! Run both builds: `cargo test --release --test tensorrt_fallback` (feature off) and
//! `cargo test --release --features tensorrt --test tensorrt_fallback` (the plan and
//! library checks; fake libnvinfer libraries are compiled by the test with `cc`).

use std::path::{Path, PathBuf};
use std::process::Command;

use echoview::bundle::Bundle;
use echoview::engine::tensorrt::loader::{Gpu, TrtVersion};
use echoview::engine::tensorrt::plan::{self, ModelNeeds};
use echoview::engine::tensorrt::rebuild::{Rebuild, RebuildError, RebuildRequest};
use echoview::engine::{self, EngineKind, FallbackReason, TrtOptions};
use echoview::pipeline::{BeatReport, BeatSink, Pipeline};
use echoview::replay::replay_session;
use echoview::sim::record::record;
use echoview::sim::{ScanScript, SimConfig};
use echoview::views::View;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn demo_bundle() -> Bundle {
    Bundle::load(&repo().join("models/demo")).unwrap()
}

/// A short simulated session: two views, a few beats each.
fn write_session(path: &Path) {
    let config = SimConfig {
        seed: 11,
        scan: ScanScript::from_views(&[View::Plax, View::A4c], 3),
        ..SimConfig::default()
    };
    record(config, path).unwrap();
}

/// Counts classified beats.
#[derive(Default)]
struct Count(usize);

impl BeatSink for Count {
    fn beat(&mut self, _: &BeatReport) -> std::io::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn skipped(&mut self, _: &echoview::gate::SkippedBeat) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `--engine auto` with `options`, checks it ended on tract with a reason of `code`,
/// replays a session on it and checks that beats were labelled. Returns the reason.
fn auto_ends_on_tract(options: &TrtOptions, code: &str) -> FallbackReason {
    let bundle = demo_bundle();
    let selected = engine::select(&bundle, EngineKind::Auto, options).unwrap();
    let reason = selected.fallback.clone().expect("auto fell back");
    assert_eq!(reason.code(), code, "{reason}");
    assert_eq!(selected.engine.name(), "tract");
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("s.mcap");
    write_session(&session);
    let mut pipeline = Pipeline::new(&bundle, selected.engine);
    let mut sink = Count::default();
    replay_session(&session, &mut pipeline, &mut sink).unwrap();
    assert!(sink.0 >= 4, "only {} beats labelled", sink.0);
    // The explicit engine refuses instead of falling back, with the same reason.
    match engine::select(&bundle, EngineKind::Tensorrt, options) {
        Err(engine::EngineError::TensorRt(r)) => assert_eq!(r.code(), code),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("--engine tensorrt ran without TensorRT"),
    }
    reason
}

/// Options pointing at `dir`'s plan and at libraries that do not exist.
fn options_in(dir: &Path) -> TrtOptions {
    TrtOptions {
        plan: dir.join("encoder.plan"),
        libnvinfer: Some(dir.join("no-libnvinfer.so")),
        libcudart: Some(dir.join("no-libcudart.so")),
    }
}

/// The request the daemon would make for the demo bundle on an Orin with TensorRT 10.3.
fn request(plan: &Path) -> RebuildRequest {
    let bundle = demo_bundle();
    let needs = ModelNeeds::of(&bundle);
    RebuildRequest {
        onnx: bundle.encoder_path(),
        plan: plan.to_path_buf(),
        onnx_sha256: needs.onnx_sha256,
        tensorrt: TrtVersion::decode(100_300).unwrap(),
        gpu: Gpu {
            name: "Orin".into(),
            compute_capability: "8.7".into(),
        },
        input_shapes: needs.input_shapes,
    }
}

/// Writes an executable fake `trtexec` that saves `plan_bytes` (or fails when `None`).
fn fake_trtexec(dir: &Path, plan_bytes: Option<&str>) -> PathBuf {
    let path = dir.join("fake-trtexec");
    let body = match plan_bytes {
        Some(bytes) => format!(
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --saveEngine=*) \
             printf '%s' '{bytes}' > \"${{a#--saveEngine=}}\";; esac; done\n"
        ),
        None => "#!/bin/sh\necho 'Error[4]: fake network is invalid' >&2\nexit 1\n".into(),
    };
    std::fs::write(&path, body).unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

/// Writes `dir/build-engine`: `board/build-engine.sh` with the fake trtexec in `dir`.
fn fake_builder(dir: &Path, plan_bytes: Option<&str>) -> PathBuf {
    let trtexec = fake_trtexec(dir, plan_bytes);
    // The script reads TRTEXEC from its environment; a wrapper sets it for this build only.
    let wrapper = dir.join("build-engine");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nTRTEXEC='{}' exec '{}' \"$@\"\n",
            trtexec.display(),
            repo().join("board/build-engine.sh").display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .unwrap();
    wrapper
}

/// Runs `board/build-engine.sh` for `request` with the fake trtexec in `dir`.
fn rebuild(
    dir: &Path,
    plan_bytes: Option<&str>,
    request: &RebuildRequest,
) -> Result<(), RebuildError> {
    let wrapper = fake_builder(dir, plan_bytes);
    let mut build = Rebuild::start(&wrapper, request);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while build.poll().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    build.wait()
}

#[test]
fn the_build_script_writes_a_plan_and_sidecar_that_echoview_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("encoder.plan");
    let request = request(&plan_path);
    rebuild(dir.path(), Some("PLAN-v1"), &request).unwrap();
    let checked = plan::read_checked(&plan_path, &ModelNeeds::of(&demo_bundle())).unwrap();
    assert_eq!(checked.bytes, b"PLAN-v1");
    assert_eq!(checked.sidecar.tensorrt_version, "10.3.0");
    assert_eq!(checked.sidecar.gpu_name, "Orin");
    assert_eq!(
        plan::device_mismatch(&checked.sidecar, request.tensorrt, &request.gpu),
        None
    );
    // A failing trtexec leaves the good plan in place and reports trtexec's words.
    match rebuild(dir.path(), None, &request) {
        Err(RebuildError::Failed { stderr_tail, .. }) => {
            assert!(
                stderr_tail.contains("fake network is invalid"),
                "{stderr_tail}"
            )
        }
        other => panic!("expected a failed build, got {other:?}"),
    }
    assert_eq!(std::fs::read(&plan_path).unwrap(), b"PLAN-v1");
    assert!(!dir.path().join("encoder.plan.partial").exists());
}

#[test]
fn the_build_script_refuses_the_wrong_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let mut request = request(&dir.path().join("encoder.plan"));
    request.onnx_sha256 = "00".repeat(32);
    match rebuild(dir.path(), Some("PLAN"), &request) {
        Err(RebuildError::Failed { stderr_tail, .. }) => {
            assert!(stderr_tail.contains("wrong file"), "{stderr_tail}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Compiles a fake libnvinfer from C `source` with the system C compiler.
fn fake_libnvinfer(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let so = dir.join(format!("{name}.so"));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success(), "cc failed on {}", c.display());
    so
}

/// A fake libnvinfer of TensorRT 10.3.0 whose runtime factory returns null.
const FAKE_TRT_10: &str = "int getInferLibVersion(void) { return 100300; }\n\
     void *createInferRuntime_INTERNAL(void *l, int v) { (void)l; (void)v; return 0; }\n";

#[test]
fn the_probe_reports_each_layer_for_doctor() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_libnvinfer(dir.path(), "libnvinfer-10", FAKE_TRT_10);
    let options = TrtOptions {
        libnvinfer: Some(lib.clone()),
        ..options_in(dir.path())
    };
    let report = echoview::engine::tensorrt::probe(&demo_bundle(), &options);
    let (name, version) = report.library.clone().unwrap();
    assert_eq!(name, lib.display().to_string());
    assert_eq!(version.to_string(), "10.3.0");
    assert_eq!(report.gpu.clone().unwrap_err().code(), "cuda_missing");
    assert_eq!(report.plan.clone().unwrap_err().code(), "plan_missing");
    let verdict = report.verdict.clone().unwrap();
    if cfg!(feature = "tensorrt") {
        assert_eq!(verdict.code(), "plan_missing");
    } else {
        assert_eq!(verdict.code(), "not_compiled");
    }
    let text = report.to_string();
    assert!(
        text.contains("libnvinfer: ") && text.contains("TensorRT 10.3.0"),
        "{text}"
    );
    assert!(text.contains("engine auto: tract"), "{text}");
}

#[cfg(not(feature = "tensorrt"))]
mod feature_off {
    use super::*;

    #[test]
    fn auto_says_tensorrt_is_not_compiled_in() {
        let dir = tempfile::tempdir().unwrap();
        auto_ends_on_tract(&options_in(dir.path()), "not_compiled");
    }

    #[test]
    fn replay_names_the_fallback_on_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("s.mcap");
        write_session(&session);
        let out = Command::new(env!("CARGO_BIN_EXE_echoview"))
            .arg("replay")
            .arg(&session)
            .arg("--model")
            .arg(repo().join("models/demo"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("engine: tract (TensorRT not used, not_compiled"),
            "{stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 4);
    }
}

#[cfg(feature = "tensorrt")]
mod feature_on {
    use super::*;
    use echoview::daemon::protocol::{Hello, Message, StatusMsg, ViewMsg};

    /// Writes a plan of the demo bundle's encoder whose sidecar matches the model.
    fn good_plan(dir: &Path) -> PathBuf {
        let plan_path = dir.join("encoder.plan");
        rebuild(dir, Some("PLAN-v1"), &request(&plan_path)).unwrap();
        plan_path
    }

    #[test]
    fn a_missing_plan() {
        let dir = tempfile::tempdir().unwrap();
        auto_ends_on_tract(&options_in(dir.path()), "plan_missing");
    }

    #[test]
    fn a_truncated_plan() {
        let dir = tempfile::tempdir().unwrap();
        let plan = good_plan(dir.path());
        std::fs::write(&plan, b"PLAN").unwrap();
        auto_ends_on_tract(&options_in(dir.path()), "plan_truncated");
    }

    #[test]
    fn a_corrupt_plan() {
        let dir = tempfile::tempdir().unwrap();
        let plan = good_plan(dir.path());
        std::fs::write(&plan, b"PLAN-v2").unwrap();
        auto_ends_on_tract(&options_in(dir.path()), "plan_corrupt");
    }

    #[test]
    fn a_plan_of_another_model_is_stale_and_a_rebuild_cures_it() {
        let dir = tempfile::tempdir().unwrap();
        let plan_path = dir.path().join("encoder.plan");
        let mut old = request(&plan_path);
        old.onnx_sha256 = plan::hex_sha256(b"an older encoder.onnx");
        // The script checks the ONNX's hash, so an old plan is made by editing the sidecar.
        rebuild(dir.path(), Some("PLAN-old"), &request(&plan_path)).unwrap();
        let side = plan::sidecar_path(&plan_path);
        let text = std::fs::read_to_string(&side)
            .unwrap()
            .replace(&request(&plan_path).onnx_sha256, &old.onnx_sha256);
        std::fs::write(&side, text).unwrap();
        let reason = auto_ends_on_tract(&options_in(dir.path()), "plan_stale");
        assert!(reason.plan_rebuild_helps());
        assert!(reason.to_string().contains("onnx_sha256"), "{reason}");

        // The background rebuild replaces it; auto then gets past the plan to the library.
        rebuild(dir.path(), Some("PLAN-new"), &request(&plan_path)).unwrap();
        auto_ends_on_tract(&options_in(dir.path()), "library_missing");
    }

    #[test]
    fn a_missing_libnvinfer() {
        let dir = tempfile::tempdir().unwrap();
        good_plan(dir.path());
        let reason = auto_ends_on_tract(&options_in(dir.path()), "library_missing");
        assert!(!reason.plan_rebuild_helps());
    }

    #[test]
    fn a_libnvinfer_of_the_wrong_major_version() {
        let dir = tempfile::tempdir().unwrap();
        good_plan(dir.path());
        let lib = fake_libnvinfer(
            dir.path(),
            "libnvinfer-7",
            "int getInferLibVersion(void) { return 7103; }\n\
             void *createInferRuntime_INTERNAL(void *l, int v) { (void)l; (void)v; return 0; }\n",
        );
        let options = TrtOptions {
            libnvinfer: Some(lib),
            ..options_in(dir.path())
        };
        match auto_ends_on_tract(&options, "version_mismatch") {
            FallbackReason::VersionMismatch { found, .. } => assert_eq!(found.to_string(), "7.1.3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_library_without_tensorrt_symbols() {
        let dir = tempfile::tempdir().unwrap();
        good_plan(dir.path());
        let lib = fake_libnvinfer(
            dir.path(),
            "libnot",
            "int something_else(void) { return 1; }\n",
        );
        let options = TrtOptions {
            libnvinfer: Some(lib),
            ..options_in(dir.path())
        };
        auto_ends_on_tract(&options, "symbol_missing");
    }

    /// A fake CUDA runtime with one GPU ("Fake Orin", compute capability 8.7) on which
    /// every allocation fails: enough to build a plan for, never to run one.
    const FAKE_CUDART: &str = "#include <string.h>\n\
         int cudaGetDeviceCount(int *n) { *n = 1; return 0; }\n\
         int cudaGetDeviceProperties(void *p, int d) { (void)d; strcpy((char *)p, \"Fake Orin\"); return 0; }\n\
         int cudaDeviceGetAttribute(int *v, int a, int d) { (void)d; *v = a == 75 ? 8 : 7; return 0; }\n\
         int cudaMalloc(void **p, unsigned long n) { (void)p; (void)n; return 2; }\n\
         int cudaFree(void *p) { (void)p; return 0; }\n\
         int cudaMemcpyAsync(void *d, const void *s, unsigned long n, int k, void *t) \
         { (void)d; (void)s; (void)n; (void)k; (void)t; return 1; }\n\
         int cudaStreamCreate(void **s) { *s = 0; return 0; }\n\
         int cudaStreamSynchronize(void *s) { (void)s; return 0; }\n\
         int cudaStreamDestroy(void *s) { (void)s; return 0; }\n";

    /// Reads the daemon's socket: hello, views and statuses as they come.
    struct Client {
        lines: std::io::Lines<std::io::BufReader<std::os::unix::net::UnixStream>>,
        hello: Option<Hello>,
        views: Vec<ViewMsg>,
        statuses: Vec<StatusMsg>,
    }

    impl Client {
        fn connect(path: &Path) -> Client {
            let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            Client {
                lines: std::io::BufRead::lines(std::io::BufReader::new(stream)),
                hello: None,
                views: Vec::new(),
                statuses: Vec::new(),
            }
        }

        /// Reads messages until `done` holds, failing after `within` seconds.
        fn read_until(&mut self, within: u64, done: impl Fn(&Client) -> bool) {
            let start = std::time::Instant::now();
            while !done(self) {
                assert!(start.elapsed().as_secs() < within, "timed out");
                let line = self.lines.next().expect("connection closed").unwrap();
                match Message::from_line(&line).unwrap().expect("a known message") {
                    Message::Hello(h) => self.hello = Some(h),
                    Message::View(v) => self.views.push(v),
                    Message::Status(s) => self.statuses.push(*s),
                }
            }
        }
    }

    #[test]
    fn the_daemon_rebuilds_a_missing_plan_and_stays_on_tract_when_it_cannot_load() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let session = dir.join("s.mcap");
        record(
            SimConfig {
                seed: 12,
                scan: ScanScript::from_views(&[View::A4c], 12),
                ..SimConfig::default()
            },
            &session,
        )
        .unwrap();
        let builder = fake_builder(dir, Some("PLAN-rebuilt"));
        // TensorRT 10.3 whose runtime factory fails, on a GPU where nothing can run: the plan
        // can be built for them, but not loaded.
        let nvinfer = fake_libnvinfer(dir, "libnvinfer-10", FAKE_TRT_10);
        let cudart = fake_libnvinfer(dir, "libcudart-fake", FAKE_CUDART);
        let plan = dir.join("encoder.plan");
        let socket = dir.join("labels.sock");
        let config = dir.join("echoview.toml");
        std::fs::write(
            &config,
            format!(
                "[model]\nengine = \"auto\"\nplan = \"{}\"\nplan_builder = \"{}\"\n",
                plan.display(),
                builder.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_echoview"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--play")
            .arg(&session)
            .arg("--socket")
            .arg(&socket)
            .arg("--model")
            .arg(repo().join("models/demo"))
            .env("ECHOVIEW_LIBNVINFER", &nvinfer)
            .env("ECHOVIEW_LIBCUDART", &cudart)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed().as_secs() < 20 && child.try_wait().unwrap().is_none(),
                "the daemon did not start: {}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut early = Client::connect(&socket);
        early.read_until(5, |c| c.hello.is_some());
        let hello = early.hello.clone().unwrap();
        assert_eq!(hello.engine, "tract");
        assert_eq!(hello.fallback_reason.as_deref(), Some("plan_missing"));
        // The rebuild runs, ends, and the new plan is refused; beats keep coming throughout.
        early.read_until(30, |c| {
            c.views.len() >= 5
                && c.statuses.last().is_some_and(|s| {
                    s.engine
                        .plan_rebuild
                        .as_ref()
                        .is_some_and(|r| r.state != "running")
                })
        });
        let status = early.statuses.last().unwrap().clone();
        let rebuild = status.engine.plan_rebuild.clone().unwrap();
        // With TensorRT headers the shim calls the fake factory, which returns null; without
        // them (as on CI) it cannot call it at all.
        let expected = if echoview::engine::tensorrt::built_version().is_some() {
            "runtime_null"
        } else {
            "no_headers"
        };
        assert_eq!(rebuild.state, "load_failed", "{status:?}");
        assert_eq!(rebuild.plan, plan.display().to_string());
        assert_eq!(status.engine.name, "tract");
        assert_eq!(status.engine.device.as_deref(), Some("cpu"));
        assert_eq!(
            status.engine.fallback_reason.as_deref(),
            Some(expected),
            "{status:?}"
        );
        // The plan the fake trtexec wrote is on disk with a sidecar for this TensorRT and GPU.
        let checked = plan::read_checked(&plan, &ModelNeeds::of(&demo_bundle())).unwrap();
        assert_eq!(checked.bytes, b"PLAN-rebuilt");
        assert_eq!(
            (
                checked.sidecar.tensorrt_version.as_str(),
                checked.sidecar.gpu_name.as_str(),
                checked.sidecar.compute_capability.as_str()
            ),
            ("10.3.0", "Fake Orin", "8.7")
        );
        // A client arriving now is greeted with the new reason.
        let mut late = Client::connect(&socket);
        late.read_until(5, |c| c.hello.is_some());
        assert_eq!(
            late.hello.as_ref().unwrap().fallback_reason.as_deref(),
            Some(expected)
        );
        // Every beat was labelled: consecutive beat numbers, none dropped.
        early.read_until(30, |c| c.views.len() >= 7);
        let numbers: Vec<u64> = early.views.iter().map(|v| v.beat).collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "beats missing: {numbers:?}"
        );
        assert!(early.views.iter().all(|v| !v.label.is_empty()));
        let last = early.statuses.last().unwrap();
        assert_eq!(last.drops.beats, 0, "{last:?}");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_libnvinfer_whose_runtime_is_null() {
        let dir = tempfile::tempdir().unwrap();
        good_plan(dir.path());
        // The right major for the shim, and a runtime factory that fails.
        let major = echoview::engine::tensorrt::supported_majors()[0];
        let code = if major >= 10 {
            major * 10_000 + 300
        } else {
            major * 1000 + 601
        };
        let lib = fake_libnvinfer(
            dir.path(),
            "libnvinfer-null",
            &format!(
                "int getInferLibVersion(void) {{ return {code}; }}\n\
                 void *createInferRuntime_INTERNAL(void *l, int v) \
                 {{ (void)l; (void)v; return 0; }}\n"
            ),
        );
        let options = TrtOptions {
            libnvinfer: Some(lib),
            ..options_in(dir.path())
        };
        // Without TensorRT headers (as on CI) the shim cannot call the factory and says so;
        // with headers it calls it (before needing CUDA) and reports the null runtime.
        let expected = if echoview::engine::tensorrt::built_version().is_some() {
            "runtime_null"
        } else {
            "no_headers"
        };
        auto_ends_on_tract(&options, expected);
    }
}
