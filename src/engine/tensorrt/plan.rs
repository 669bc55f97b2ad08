//! The plan cache: `encoder.plan` and its sidecar `encoder.plan.json`.
//!
//! A TensorRT plan is only valid for the ONNX file, TensorRT version and GPU model that built
//! it, and TensorRT's own check on load is a crash or an opaque error at best. So every plan
//! carries a sidecar naming what it was built from and for, plus its own size and hash; the
//! daemon trusts a plan only when all of it matches, and otherwise keeps serving on tract and
//! rebuilds the plan (see `rebuild`). The sidecar is written by `board/build-engine.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FallbackReason;
use super::loader::{Gpu, TrtVersion};
use crate::bundle::Bundle;

/// The sidecar format this build reads and `board/build-engine.sh` writes.
pub const SIDECAR_FORMAT: u32 = 1;

/// The only precision echoview builds plans in (`trtexec --fp16`): Orin's tensor cores run it
/// at twice FP32's rate, and the start-up check bounds its error against tract.
pub const PRECISION: &str = "fp16";

/// `encoder.plan.json`: what a plan was built from and for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Sidecar format version; another one is treated as stale, never misread.
    pub format: u32,
    /// sha256 of the ONNX file the plan was built from: a new model makes the plan stale.
    pub onnx_sha256: String,
    /// TensorRT version that built the plan (`10.3.0`): plans do not load across versions.
    pub tensorrt_version: String,
    /// GPU name the plan was built on: plans are tuned per GPU model.
    pub gpu_name: String,
    /// Compute capability of that GPU (`8.7`).
    pub compute_capability: String,
    /// Precision flag the plan was built with (`fp16`).
    pub precision: String,
    /// Input tensor shapes the plan was built for, by tensor name.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Size of the plan file: a shorter file is a truncated copy.
    pub plan_bytes: u64,
    /// sha256 of the plan file: anything else is a corrupt or half-written plan.
    pub plan_sha256: String,
}

/// What the model needs of a plan (known without TensorRT).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelNeeds {
    /// sha256 of the bundle's encoder ONNX (from its verified manifest).
    pub onnx_sha256: String,
    /// The encoder's input name and shape `[1, C, H, W]`.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
}

impl ModelNeeds {
    /// What `bundle`'s encoder needs.
    pub fn of(bundle: &Bundle) -> ModelNeeds {
        let m = &bundle.manifest;
        let shape = vec![
            1,
            m.input.channels as usize,
            m.input.height as usize,
            m.input.width as usize,
        ];
        ModelNeeds {
            onnx_sha256: m.encoder.sha256.clone(),
            input_shapes: BTreeMap::from([(m.encoder.input.clone(), shape)]),
        }
    }
}

/// The sidecar's path for `plan`: `encoder.plan` -> `encoder.plan.json`.
pub fn sidecar_path(plan: &Path) -> PathBuf {
    let mut name = plan.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// A plan read from disk whose bytes match its sidecar and whose sidecar matches the model.
#[derive(Debug, Clone)]
pub struct CheckedPlan {
    /// The serialised engine.
    pub bytes: Vec<u8>,
    /// Its sidecar.
    pub sidecar: Sidecar,
}

/// Reads `plan` and its sidecar and checks them against each other and against `needs`:
/// missing, truncated, corrupt and stale plans each give their own reason.
pub fn read_checked(plan: &Path, needs: &ModelNeeds) -> Result<CheckedPlan, FallbackReason> {
    let shown = plan.display().to_string();
    let bytes = match std::fs::read(plan) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FallbackReason::PlanMissing { path: shown });
        }
        Err(e) => {
            return Err(FallbackReason::PlanCorrupt {
                path: shown,
                message: format!("cannot read it: {e}"),
            });
        }
    };
    let side = sidecar_path(plan);
    let sidecar_err = |message: String| FallbackReason::SidecarInvalid {
        path: side.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&side).map_err(|e| sidecar_err(e.to_string()))?;
    let sidecar: Sidecar = serde_json::from_str(&text).map_err(|e| sidecar_err(e.to_string()))?;
    let len = bytes.len() as u64;
    if len < sidecar.plan_bytes {
        return Err(FallbackReason::PlanTruncated {
            path: shown,
            bytes: len,
            expected: sidecar.plan_bytes,
        });
    }
    let hash = hex_sha256(&bytes);
    if len != sidecar.plan_bytes || hash != sidecar.plan_sha256 {
        return Err(FallbackReason::PlanCorrupt {
            path: shown,
            message: format!(
                "{len} bytes with sha256 {hash}, the sidecar says {} bytes with sha256 {}",
                sidecar.plan_bytes, sidecar.plan_sha256
            ),
        });
    }
    if let Some((field, built, now)) = model_mismatch(&sidecar, needs) {
        return Err(FallbackReason::PlanStale {
            path: shown,
            field,
            plan: built,
            current: now,
        });
    }
    Ok(CheckedPlan { bytes, sidecar })
}

/// The first field in which `sidecar` differs from what the model needs, as
/// (field, plan's value, needed value).
pub fn model_mismatch(
    sidecar: &Sidecar,
    needs: &ModelNeeds,
) -> Option<(&'static str, String, String)> {
    if sidecar.format != SIDECAR_FORMAT {
        return Some((
            "format",
            sidecar.format.to_string(),
            SIDECAR_FORMAT.to_string(),
        ));
    }
    if !sidecar.onnx_sha256.eq_ignore_ascii_case(&needs.onnx_sha256) {
        return Some((
            "onnx_sha256",
            sidecar.onnx_sha256.clone(),
            needs.onnx_sha256.clone(),
        ));
    }
    if sidecar.precision != PRECISION {
        return Some(("precision", sidecar.precision.clone(), PRECISION.into()));
    }
    if sidecar.input_shapes != needs.input_shapes {
        return Some((
            "input_shapes",
            format!("{:?}", sidecar.input_shapes),
            format!("{:?}", needs.input_shapes),
        ));
    }
    None
}

/// The first field in which `sidecar` differs from the TensorRT and GPU present, as
/// (field, plan's value, present value).
pub fn device_mismatch(
    sidecar: &Sidecar,
    tensorrt: TrtVersion,
    gpu: &Gpu,
) -> Option<(&'static str, String, String)> {
    let version = tensorrt.to_string();
    if sidecar.tensorrt_version != version {
        return Some((
            "tensorrt_version",
            sidecar.tensorrt_version.clone(),
            version,
        ));
    }
    if sidecar.gpu_name != gpu.name {
        return Some(("gpu_name", sidecar.gpu_name.clone(), gpu.name.clone()));
    }
    if sidecar.compute_capability != gpu.compute_capability {
        return Some((
            "compute_capability",
            sidecar.compute_capability.clone(),
            gpu.compute_capability.clone(),
        ));
    }
    None
}

/// Lowercase hex sha256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> ModelNeeds {
        ModelNeeds {
            onnx_sha256: "ab".repeat(32),
            input_shapes: BTreeMap::from([("image".to_string(), vec![1, 1, 64, 64])]),
        }
    }

    /// Writes a plan and a sidecar that matches it and `needs()`.
    fn write_plan(dir: &Path, bytes: &[u8]) -> PathBuf {
        let plan = dir.join("encoder.plan");
        std::fs::write(&plan, bytes).unwrap();
        let sidecar = Sidecar {
            format: SIDECAR_FORMAT,
            onnx_sha256: needs().onnx_sha256,
            tensorrt_version: "10.3.0".into(),
            gpu_name: "Orin".into(),
            compute_capability: "8.7".into(),
            precision: PRECISION.into(),
            input_shapes: needs().input_shapes,
            plan_bytes: bytes.len() as u64,
            plan_sha256: hex_sha256(bytes),
        };
        std::fs::write(
            sidecar_path(&plan),
            serde_json::to_string(&sidecar).unwrap(),
        )
        .unwrap();
        plan
    }

    #[test]
    fn a_matching_plan_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let plan = write_plan(dir.path(), b"plan bytes");
        let checked = read_checked(&plan, &needs()).unwrap();
        assert_eq!(checked.bytes, b"plan bytes");
        let gpu = Gpu {
            name: "Orin".into(),
            compute_capability: "8.7".into(),
        };
        let v10 = TrtVersion::decode(100_300).unwrap();
        assert_eq!(device_mismatch(&checked.sidecar, v10, &gpu), None);
        let v86 = TrtVersion::decode(8601).unwrap();
        assert_eq!(
            device_mismatch(&checked.sidecar, v86, &gpu).map(|m| m.0),
            Some("tensorrt_version")
        );
        let other = Gpu {
            name: "Orin".into(),
            compute_capability: "7.2".into(),
        };
        assert_eq!(
            device_mismatch(&checked.sidecar, v10, &other).map(|m| m.0),
            Some("compute_capability")
        );
    }

    #[test]
    fn missing_truncated_corrupt_and_stale_plans_have_their_own_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let code =
            |plan: &Path, needs: &ModelNeeds| read_checked(plan, needs).err().map(|r| r.code());
        assert_eq!(
            code(&dir.path().join("none.plan"), &needs()),
            Some("plan_missing")
        );
        let plan = write_plan(dir.path(), b"0123456789");
        std::fs::write(&plan, b"01234").unwrap();
        assert_eq!(code(&plan, &needs()), Some("plan_truncated"));
        std::fs::write(&plan, b"0123456788").unwrap();
        assert_eq!(code(&plan, &needs()), Some("plan_corrupt"));
        let plan = write_plan(dir.path(), b"0123456789");
        let mut other = needs();
        other.onnx_sha256 = "cd".repeat(32);
        assert_eq!(code(&plan, &other), Some("plan_stale"));
        let mut other = needs();
        other.input_shapes = BTreeMap::from([("image".to_string(), vec![1, 1, 32, 32])]);
        assert_eq!(code(&plan, &other), Some("plan_stale"));
        std::fs::write(sidecar_path(&plan), "{").unwrap();
        assert_eq!(code(&plan, &needs()), Some("sidecar_invalid"));
    }
}
