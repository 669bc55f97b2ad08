//! Moving the encoder onto TensorRT once a missing or stale plan has been rebuilt.
//!
//! When `engine = "auto"` ends on tract because of the plan itself (missing, truncated,
//! corrupt, stale, refused by TensorRT), building it anew may cure it, but a build takes
//! minutes on a Jetson. So the daemon serves on tract meanwhile and a background thread runs
//! the build command (`board/build-engine.sh`: `trtexec --onnx ... --fp16 --saveEngine ...`,
//! at the lowest CPU priority), then opens the new plan exactly as start-up would (sidecar,
//! library, GPU, deserialisation, and the check against tract on the reference frame). The
//! inference thread polls between tasks and swaps the opened engine in, so no beat waits on
//! the build or the check and none is dropped; if the new plan cannot run, it stays on tract
//! and the fallback reason becomes the new plan's.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};

use crate::bundle::Bundle;
use crate::engine::tensorrt::rebuild::{Rebuild, RebuildError};
use crate::engine::{self, Engine, FallbackReason, TrtOptions};

use super::infer::ClassifyBeat;
use super::log::{self, Level};
use super::protocol::PlanRebuildStatus;
use super::shared::Shared;

/// How a plan switch ended.
pub enum Outcome {
    /// The rebuilt plan loaded and agrees with tract: the engine to run from now on.
    Switched(Box<dyn Engine>),
    /// The plan was built but TensorRT cannot run it: stay on tract, for this reason.
    LoadFailed(FallbackReason),
    /// The build command failed; the engine and its fallback reason stay as they are.
    BuildFailed(RebuildError),
}

/// A plan rebuild running in the background, then the opening of its plan.
pub struct PlanSwitch {
    /// Delivers the one outcome.
    outcome: Receiver<Outcome>,
    /// The plan being built, for the status.
    plan: PathBuf,
}

impl PlanSwitch {
    /// Starts rebuilding `bundle`'s plan at `options.plan` with the build command `builder`,
    /// when `reason` (why auto fell back) is one a new plan may cure and TensorRT and a GPU
    /// are there to build it for. `Err` says why no rebuild was started.
    pub fn start(
        bundle: &Bundle,
        options: &TrtOptions,
        reason: &FallbackReason,
        builder: &Path,
    ) -> Result<PlanSwitch, String> {
        if !reason.plan_rebuild_helps() {
            return Err(format!("a new plan would not help ({})", reason.code()));
        }
        let request = engine::tensorrt::rebuild_request(bundle, options)
            .map_err(|why| format!("cannot build a plan here: {why}"))?;
        let (tx, rx) = mpsc::channel();
        let plan = options.plan.clone();
        let (bundle, options, builder) = (bundle.clone(), options.clone(), builder.to_path_buf());
        std::thread::Builder::new()
            .name("plan-rebuild".into())
            .spawn(move || {
                let outcome = match Rebuild::start_low_priority(&builder, &request).wait() {
                    Err(e) => Outcome::BuildFailed(e),
                    Ok(()) => match engine::tensorrt::open(&bundle, &options) {
                        Ok(engine) => Outcome::Switched(engine),
                        Err(reason) => Outcome::LoadFailed(reason),
                    },
                };
                // A send fails only when the daemon stopped before the build ended.
                let _ = tx.send(outcome);
            })
            .map_err(|e| format!("cannot start the plan rebuild thread: {e}"))?;
        Ok(PlanSwitch { outcome: rx, plan })
    }

    /// [`PlanSwitch::start`], logging what was started or why nothing was.
    pub fn start_logged(
        bundle: &Bundle,
        options: &TrtOptions,
        reason: &FallbackReason,
        builder: &Path,
    ) -> Option<PlanSwitch> {
        match PlanSwitch::start(bundle, options, reason, builder) {
            Ok(switch) => {
                log::log(
                    Level::Notice,
                    format_args!(
                        "rebuilding the TensorRT plan {} in the background with {}; serving \
                         on tract meanwhile",
                        switch.plan.display(),
                        builder.display()
                    ),
                );
                Some(switch)
            }
            Err(why) => {
                log::log(
                    Level::Notice,
                    format_args!("no TensorRT plan rebuild: {why}"),
                );
                None
            }
        }
    }

    /// The plan being built.
    pub fn plan(&self) -> &Path {
        &self.plan
    }

    /// The status of this rebuild in `state`, with `error` for the failed states.
    pub fn status(&self, state: &str, error: Option<String>) -> PlanRebuildStatus {
        PlanRebuildStatus {
            state: state.into(),
            plan: self.plan.display().to_string(),
            error,
        }
    }

    /// Acts on how the rebuild ended: moves `model` onto the new engine, or keeps it on
    /// tract with the new plan's reason (a failed build leaves the engine and its reason as
    /// they are). The status, and so the `hello` of later clients, follow.
    pub fn apply(&self, outcome: Outcome, model: &mut dyn ClassifyBeat, shared: &Shared) {
        let plan = self.plan.display();
        let (state, error) = match outcome {
            Outcome::Switched(engine) => {
                let name = engine.name();
                if model.switch_engine(engine) {
                    log::log(
                        Level::Notice,
                        format_args!("engine: {name} on the rebuilt plan {plan}"),
                    );
                    shared.set_engine(super::engine_status(name, None));
                    ("switched", None)
                } else {
                    let why = "this classifier cannot change engines".to_string();
                    ("load_failed", Some(why))
                }
            }
            Outcome::LoadFailed(reason) => {
                log::log(
                    Level::Warning,
                    format_args!(
                        "the rebuilt plan {plan} cannot run; staying on tract ({}): {reason}",
                        reason.code()
                    ),
                );
                shared.set_engine(super::engine_status(model.engine_name(), Some(&reason)));
                ("load_failed", Some(reason.to_string()))
            }
            Outcome::BuildFailed(e) => {
                log::log(
                    Level::Warning,
                    format_args!("the TensorRT plan rebuild failed: {e}"),
                );
                shared.error(format!("plan rebuild: {e}"));
                ("build_failed", Some(e.to_string()))
            }
        };
        shared.set_plan_rebuild(self.status(state, error));
    }

    /// The outcome once the build and the opening have ended, without waiting; a thread
    /// that ended without one (it panicked) is a failed build.
    pub fn poll(&mut self) -> Option<Outcome> {
        match self.outcome.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Outcome::BuildFailed(RebuildError::Lost)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rebuild_where_a_plan_would_not_help_or_cannot_be_built() {
        let bundle =
            Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = TrtOptions {
            plan: dir.path().join("encoder.plan"),
            libnvinfer: Some(dir.path().join("no-libnvinfer.so")),
            libcudart: Some(dir.path().join("no-libcudart.so")),
        };
        let builder = dir.path().join("build-engine.sh");
        let err = PlanSwitch::start(&bundle, &options, &FallbackReason::NotCompiled, &builder)
            .err()
            .unwrap();
        assert!(err.contains("not_compiled"), "{err}");
        let missing = FallbackReason::PlanMissing { path: "p".into() };
        let err = PlanSwitch::start(&bundle, &options, &missing, &builder)
            .err()
            .unwrap();
        assert!(err.contains("libnvinfer not found"), "{err}");
    }
}
