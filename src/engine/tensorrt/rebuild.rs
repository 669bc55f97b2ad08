//! Rebuilding a stale or missing plan in the background.
//!
//! Building a plan takes minutes on a Jetson (trtexec times every tactic), far too long to
//! hold up the cart: the daemon keeps classifying on tract, runs the build script
//! (`board/build-engine.sh`, which calls `trtexec --onnx ... --fp16 --saveEngine ...` and
//! writes the sidecar) as a child process on a thread of its own, and polls for the result
//! between beats. The script writes the plan and sidecar last and whole, and the sidecar's
//! plan hash catches any half-written state, so a crash mid-build leaves a plan that is
//! refused, never one that is trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use super::loader::{Gpu, TrtVersion};

/// Why a rebuild failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RebuildError {
    /// The build command could not be started.
    #[error("cannot start the plan build {program}: {message}")]
    Spawn {
        /// The command.
        program: String,
        /// What the OS said.
        message: String,
    },
    /// The build command ran and failed.
    #[error("the plan build {program} failed ({status}): {stderr_tail}")]
    Failed {
        /// The command.
        program: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error, where trtexec says why.
        stderr_tail: String,
    },
    /// The build thread ended without a result (it panicked).
    #[error("the plan build thread ended without a result")]
    Lost,
}

/// What to build: everything the build script needs to run trtexec and write the sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildRequest {
    /// The encoder ONNX file.
    pub onnx: PathBuf,
    /// Where the plan goes (its sidecar goes beside it).
    pub plan: PathBuf,
    /// sha256 of the ONNX file, recorded in the sidecar.
    pub onnx_sha256: String,
    /// The TensorRT version present, recorded in the sidecar.
    pub tensorrt: TrtVersion,
    /// The GPU present, recorded in the sidecar.
    pub gpu: Gpu,
    /// Input tensor shapes by name, passed to trtexec and recorded.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
}

impl RebuildRequest {
    /// The arguments of the build script (`board/build-engine.sh --help` documents them).
    pub fn args(&self) -> Vec<String> {
        let shapes: Vec<String> = self
            .input_shapes
            .iter()
            .map(|(name, dims)| {
                let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
                format!("{name}:{}", dims.join("x"))
            })
            .collect();
        vec![
            "--onnx".into(),
            self.onnx.display().to_string(),
            "--plan".into(),
            self.plan.display().to_string(),
            "--onnx-sha256".into(),
            self.onnx_sha256.clone(),
            "--tensorrt-version".into(),
            self.tensorrt.to_string(),
            "--gpu-name".into(),
            self.gpu.name.clone(),
            "--compute-capability".into(),
            self.gpu.compute_capability.clone(),
            "--shapes".into(),
            shapes.join(","),
        ]
    }
}

/// A plan build running in the background.
pub struct Rebuild {
    /// Delivers the one result.
    result: Receiver<Result<(), RebuildError>>,
    /// The result once received, so `poll` can be called again.
    done: Option<Result<(), RebuildError>>,
}

/// How much of the build's standard error to keep for the report.
const STDERR_TAIL: usize = 2000;

/// The niceness the daemon's rebuilds run at: the lowest priority, so that trtexec's minutes
/// of tactic timing never take the CPU from the pipeline still serving on tract.
pub const LOW_PRIORITY: u8 = 19;

impl Rebuild {
    /// Starts `program` with the request's arguments on a thread of its own.
    pub fn start(program: &Path, request: &RebuildRequest) -> Rebuild {
        let mut command = Command::new(program);
        command.args(request.args());
        Rebuild::spawn(command, program.display().to_string())
    }

    /// Starts `program` like [`Rebuild::start`], under `nice -n` [`LOW_PRIORITY`].
    pub fn start_low_priority(program: &Path, request: &RebuildRequest) -> Rebuild {
        let mut command = Command::new("nice");
        command
            .arg("-n")
            .arg(LOW_PRIORITY.to_string())
            .arg(program)
            .args(request.args());
        Rebuild::spawn(command, program.display().to_string())
    }

    /// Runs `command` (shown in messages as `shown`) on a thread of its own.
    fn spawn(command: Command, shown: String) -> Rebuild {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // A send fails only when nobody waits for the result any more.
            let _ = tx.send(run(command, shown));
        });
        Rebuild {
            result: rx,
            done: None,
        }
    }

    /// The result if the build has ended, without waiting.
    pub fn poll(&mut self) -> Option<&Result<(), RebuildError>> {
        if self.done.is_none() {
            match self.result.try_recv() {
                Ok(r) => self.done = Some(r),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => self.done = Some(Err(RebuildError::Lost)),
            }
        }
        self.done.as_ref()
    }

    /// Waits for the build to end.
    pub fn wait(mut self) -> Result<(), RebuildError> {
        if let Some(done) = self.done.take() {
            return done;
        }
        self.result.recv().unwrap_or(Err(RebuildError::Lost))
    }
}

/// Runs the build to its end.
fn run(mut command: Command, program: String) -> Result<(), RebuildError> {
    let output = command.output().map_err(|e| RebuildError::Spawn {
        program: program.clone(),
        message: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let start = stderr
        .char_indices()
        .rev()
        .nth(STDERR_TAIL)
        .map_or(0, |(i, _)| i);
    Err(RebuildError::Failed {
        program,
        status: output.status.to_string(),
        stderr_tail: stderr[start..].trim().to_string(),
    })
}
