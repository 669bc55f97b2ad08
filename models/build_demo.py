"""Build the trained demo bundle ``models/demo/`` from scratch, end to end, in one command.

Usage (from the repository root; only the Python standard library is needed to start)::

    python3.11 models/build_demo.py --work /tmp/echoview-demo [--venv VENV] [--jobs 2]

Steps, each logged with its duration; anything that fails stops the build:

1. **Environment**: a virtualenv from ``models/requirements.txt`` at ``--venv`` unless one is
   already there (default ``WORK/venv``).
2. **Training data**: ``echoview sim`` sessions, one per seed ``--train-seeds`` (a patient
   each: the phantom draws anatomy per seed), with varied heart rate, ECG noise, ectopic
   beats, frame size and pixel format, and a scan file per session that shuffles the view
   order and sets depth, gain, probe tilt and offset beyond the simulator's own ranges for
   about half of the segments. ``echoview clips`` cuts them (the daemon's gating and
   preprocessing). The last ``--val-sessions`` seeds are the validation sessions.
3. **Training and calibration**: ``train.py`` (see its doc), which also picks the reject
   threshold.
4. **Export**: ``export.py --checkpoint`` writes ``--out`` (default ``models/demo``) with the
   threshold and a provenance that names the seeds and says it is synthetic, not clinical.
5. **Held-out evaluation**: ``echoview replay`` with the new bundle on sessions simulated
   with ``--eval-seeds`` (never used in training): default settings, all 11 views; a scan
   with varied settings; and a session whose video is pure noise (``ood_session.py``).
   Per-beat accuracy over the 11 views (``unknown`` counts as wrong), per-class table and
   confusion matrix go to ``WORK/eval.json`` and stdout.
6. **Parity fixture**: ``make_parity_fixture.py`` writes ``tests/data/parity/`` from the
   checkpoint and the bundle, so ``tests/parity.rs`` checks tract against PyTorch.

Everything is seeded: the same command on the same machine gives the same bundle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"

#: The 11 views in canonical order (``src/views.rs``); kept here so this driver needs no
#: third-party package before the virtualenv exists.
VIEWS = (
    "PLAX",
    "PSAX-ves",
    "PSAX-base",
    "PSAX-mid",
    "PSAX-apical",
    "A2C",
    "A3C",
    "A4C",
    "A5C",
    "Suprasternal",
    "Subcostal",
)

#: train.py options of the demo, sized for about 15 minutes on 2 shared CPU cores: low
#: resolution epochs first, the head trained on a balanced subset of 30 beats per view, a
#: small outlier-exposure set and a larger fresh set to calibrate the threshold on. Options
#: after `--` on this script's command line come later and so override these.
DEMO_TRAIN_ARGS = [
    "--schedule-a", "64:4,96:2,128:2",
    "--head-max-beats", "330",
    "--ood-train-beats", "88",
    "--ood-calibration-beats", "176",
]  # fmt: skip

#: Frame sizes of the simulated carts (width, height) and how often each is drawn.
FRAME_SIZES = ((320, 240), (400, 300), (480, 360), (640, 480))
FRAME_SIZE_WEIGHTS = (4, 2, 2, 1)


def log(message: str) -> None:
    """Progress on stderr; stdout carries the final report."""
    print(f"[build_demo] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, failing the build with its output if it fails."""
    cmd = [str(c) for c in cmd]
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(cmd)}")
    return result


def parse_seeds(text: str) -> list[int]:
    """``A-B`` (inclusive) or a comma-separated list."""
    if "-" in text and "," not in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def ensure_venv(venv: Path) -> Path:
    """The virtualenv's python, creating the environment if absent."""
    python = venv / "bin" / "python"
    if python.exists():
        log(f"using the virtualenv at {venv}")
        return python
    log(f"creating a virtualenv at {venv} from models/requirements.txt (large: see the file)")
    run([sys.executable, "-m", "venv", venv])
    run([python, "-m", "pip", "install", "-r", MODELS / "requirements.txt"])
    return python


def scan_file(seed: int, beats_per_view: int) -> str:
    """A TOML scan (``src/sim/scan.rs``) with a shuffled view order and varied settings.

    About half the segments get explicit settings drawn wider than the simulator's own
    (depth 11-21 cm, gain 0.55-1.9, tilt +-14 degrees, offsets +-1.4/+-0.9 cm); the rest
    keep its defaults, so both regimes are represented.
    """
    rng = random.Random(seed * 7919 + 17)
    views = list(VIEWS)
    rng.shuffle(views)
    lines = [f"# training scan of seed {seed}, written by models/build_demo.py"]
    for view in views:
        lines += ["[[segment]]", f'view = "{view}"', f"beats = {beats_per_view}"]
        if rng.random() < 0.5:
            lines += [
                f"depth_cm = {rng.uniform(11.0, 21.0):.2f}",
                f"gain = {rng.uniform(0.55, 1.9):.3f}",
                f"tilt_deg = {rng.uniform(-14.0, 14.0):.2f}",
                f"shift_cm = [{rng.uniform(-1.4, 1.4):.2f}, {rng.uniform(-0.9, 0.9):.2f}]",
            ]
        lines.append("")
    return "\n".join(lines)


def sim_options(seed: int) -> list[str]:
    """Per-session cart and patient settings for training seed ``seed``."""
    rng = random.Random(seed * 104729 + 3)
    width, height = rng.choices(FRAME_SIZES, FRAME_SIZE_WEIGHTS)[0]
    return [
        "--bpm",
        f"{rng.uniform(52.0, 110.0):.1f}",
        "--noise",
        f"{rng.uniform(0.3, 2.0):.2f}",
        "--ectopic",
        f"{rng.choice((0.0, 0.0, 0.03, 0.08)):.2f}",
        "--width",
        str(width),
        "--height",
        str(height),
        "--format",
        rng.choice(("grey", "grey", "yuyv")),
    ]


def simulate(echoview: Path, jobs: int, tasks: list[list[str | Path]]) -> None:
    """Run ``echoview sim`` commands, ``jobs`` at a time."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(
            lambda args: subprocess.run(
                [str(echoview), "sim", *map(str, args)], capture_output=True, text=True
            ),
            tasks,
        ):
            if result.returncode != 0:
                raise SystemExit(f"echoview sim failed: {result.stderr}")


def replay(echoview: Path, bundle: Path, session: Path) -> list[dict]:
    """Per-beat JSON objects of ``echoview replay``, also kept as ``SESSION.jsonl``."""
    result = run([echoview, "replay", session, "--model", bundle], capture_output=True, text=True)
    session.with_suffix(".jsonl").write_text(result.stdout)
    log(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "(no summary)")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def score(beats: list[dict]) -> dict:
    """Accuracy over beats with a truth (``unknown`` counts as wrong), per class, confusion."""
    columns = [*VIEWS, "unknown"]
    matrix = [[0] * len(columns) for _ in VIEWS]
    for beat in beats:
        truth = beat.get("truth")
        if truth is None:
            continue
        label = beat["label"] if beat["label"] in VIEWS else "unknown"
        matrix[VIEWS.index(truth)][columns.index(label)] += 1
    total = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(len(VIEWS)))
    per_class = {
        view: {
            "beats": sum(matrix[i]),
            "accuracy": matrix[i][i] / sum(matrix[i]) if sum(matrix[i]) else None,
        }
        for i, view in enumerate(VIEWS)
    }
    return {
        "beats": total,
        "accuracy": correct / total if total else None,
        "unknown": sum(row[-1] for row in matrix),
        "per_class": per_class,
        "confusion_columns": columns,
        "confusion": matrix,
    }


def format_score(name: str, s: dict) -> str:
    """Human-readable accuracy, per-class table and confusion matrix."""
    short = [c[:7] for c in s["confusion_columns"]]
    lines = [
        f"{name}: {s['beats']} beats, accuracy {s['accuracy']:.4f}, unknown {s['unknown']}",
        "  class         beats  accuracy",
    ]
    for view, row in s["per_class"].items():
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        lines.append(f"  {view:<13} {row['beats']:>5}  {acc:>8}")
    lines.append("  truth \\ pred  " + " ".join(f"{c:>7}" for c in short))
    for view, row in zip(VIEWS, s["confusion"], strict=True):
        lines.append(f"  {view[:12]:<12} " + " ".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Build, train, export, evaluate; returns the process exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for sessions, clips, runs")
    p.add_argument("--venv", type=Path, help="virtualenv (default WORK/venv; made if absent)")
    p.add_argument("--echoview", type=Path, default=REPO / "target/release/echoview")
    p.add_argument("--out", type=Path, default=MODELS / "demo", help="bundle folder")
    p.add_argument("--train-seeds", default="1000-1039", help="training + validation seeds")
    p.add_argument("--val-sessions", type=int, default=6, help="last N train seeds validate")
    p.add_argument("--beats-per-view", type=int, default=3, help="beats per view per session")
    p.add_argument("--eval-seeds", default="9001-9006", help="held-out default-setting seeds")
    p.add_argument("--eval-scan-seed", type=int, default=9100, help="held-out varied scan")
    p.add_argument("--noise-seed", type=int, default=9200, help="held-out noise session")
    p.add_argument("--jobs", type=int, default=2, help="parallel simulations")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--version", default="0.2.0", help="bundle version")
    p.add_argument("--created", default=datetime.date.today().isoformat())
    p.add_argument("--parity-out", type=Path, default=REPO / "tests/data/parity")
    p.add_argument(
        "train_args", nargs="*", help="extra train.py options after `--` (e.g. --epochs-a 6)"
    )
    args = p.parse_args(argv)
    started = time.monotonic()
    timings: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.monotonic() - t0, 1)
        log(f"{name}: {timings[name]:.0f} s")

    if not args.echoview.is_file():
        raise SystemExit(f"{args.echoview}: no echoview binary; run `cargo build --release`")
    work = args.work.resolve()
    python = ensure_venv((args.venv or work / "venv").resolve())

    # ---- training sessions -------------------------------------------------------------
    t0 = time.monotonic()
    seeds = parse_seeds(args.train_seeds)
    sessions, clips = work / "sessions", work / "clips"
    for d in (sessions, clips):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    tasks = []
    for seed in seeds:
        scan = sessions / f"train-{seed}.toml"
        scan.write_text(scan_file(seed, args.beats_per_view))
        out = sessions / f"train-{seed}.mcap"
        tasks.append(["--out", out, "--seed", seed, "--scan", scan, *sim_options(seed)])
    simulate(args.echoview, args.jobs, tasks)
    stage("simulate training sessions", t0)
    t0 = time.monotonic()
    run(
        [args.echoview, "clips", *sorted(sessions.glob("*.mcap")), "--out", clips]
        + ["--size", "128", "--frames", "8"],
        capture_output=True,
    )
    val = set(seeds[-args.val_sessions :])
    split = work / "split.txt"
    split.write_text("".join(f"train-{s} {'val' if s in val else 'train'}\n" for s in seeds))
    stage("cut clips", t0)

    # ---- training -------------------------------------------------------------------------
    t0 = time.monotonic()
    run_dir = work / "run"
    result = run(
        [python, MODELS / "train.py", "--clips", clips, "--out", run_dir, "--split", split]
        + ["--seed", args.seed, *DEMO_TRAIN_ARGS, *args.train_args],
        stdout=subprocess.PIPE,
        text=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    threshold = summary["calibration"]["threshold"]
    stage("train and calibrate", t0)

    # ---- export ---------------------------------------------------------------------------
    t0 = time.monotonic()
    train_seeds = [s for s in seeds if s not in val]
    trained_on = (
        "synthetic phantom of `echoview sim` only (no patient data): "
        f"{len(train_seeds)} training sessions, seeds {train_seeds[0]}-{train_seeds[-1]}, "
        f"{len(val)} validation sessions, seeds {min(val)}-{max(val)}, "
        f"{args.beats_per_view} beats per view, varied scans (models/build_demo.py); "
        f"reject threshold {threshold:.4f} calibrated on validation beats and synthetic "
        "out-of-distribution clips"
    )
    # Export next to the bundle and swap at the end, so the old bundle stays whole if the
    # export fails and other users of the folder never see it half written.
    staging = args.out.with_name(args.out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    exported = run(
        [python, MODELS / "export.py", "--checkpoint", run_dir / "best.pt"]
        + ["--size", "128", "--frames", "8", "--seed", args.seed, "--out", staging]
        + ["--name", "echoview-demo", "--version", args.version]
        + [
            "--description",
            "echoview view classifier (EfficientNet-b2 encoder at 128x128, dilated temporal "
            "CNN head) trained on the synthetic phantom of `echoview sim`: the README demo's "
            "model and the tests' model. It has never seen a real echocardiogram.",
        ]
        + ["--trained-on", trained_on, "--reject-threshold", f"{threshold:.4f}"]
        + ["--intended-use", "demo and tests only; not for clinical use"]
        + ["--created", args.created],
        stdout=subprocess.PIPE,
        text=True,
    )
    (work / "export.json").write_text(exported.stdout)
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    stage("export", t0)

    # ---- held-out evaluation --------------------------------------------------------------
    t0 = time.monotonic()
    heldout = work / "heldout"
    shutil.rmtree(heldout, ignore_errors=True)
    heldout.mkdir()
    eval_seeds = parse_seeds(args.eval_seeds)
    overlap = set(eval_seeds + [args.eval_scan_seed, args.noise_seed]) & set(seeds)
    if overlap:
        raise SystemExit(f"evaluation seeds {sorted(overlap)} are also training seeds")
    scan = heldout / f"scan-{args.eval_scan_seed}.toml"
    scan.write_text(scan_file(args.eval_scan_seed, 3))
    tasks = [
        ["--out", heldout / f"default-{s}.mcap", "--seed", s, "--beats-per-view", 4]
        for s in eval_seeds
    ]
    tasks.append(
        ["--out", heldout / f"scan-{args.eval_scan_seed}.mcap", "--seed", args.eval_scan_seed]
        + ["--scan", scan, *sim_options(args.eval_scan_seed)]
    )
    tasks.append(["--out", heldout / "noise-src.mcap", "--seed", args.noise_seed])
    simulate(args.echoview, args.jobs, tasks)
    run(
        [python, MODELS / "ood_session.py", "--in", heldout / "noise-src.mcap"]
        + ["--out", heldout / "noise.mcap", "--kind", "noise", "--seed", args.noise_seed]
    )
    default_beats = [
        b
        for s in eval_seeds
        for b in replay(args.echoview, args.out, heldout / f"default-{s}.mcap")
    ]
    scan_beats = replay(args.echoview, args.out, heldout / f"scan-{args.eval_scan_seed}.mcap")
    noise_beats = replay(args.echoview, args.out, heldout / "noise.mcap")
    report = {
        "default_settings": score(default_beats),
        "varied_scan": score(scan_beats),
        "noise_session": {
            "beats": len(noise_beats),
            "unknown": sum(b["label"] == "unknown" for b in noise_beats),
            "max_confidence": max((b["confidence"] for b in noise_beats), default=None),
        },
    }
    stage("held-out evaluation", t0)

    # ---- parity fixture -------------------------------------------------------------------
    t0 = time.monotonic()
    run(
        [python, MODELS / "make_parity_fixture.py", "--checkpoint", run_dir / "best.pt"]
        + ["--bundle", args.out, "--echoview", args.echoview, "--out", args.parity_out]
        + ["--work", work / "parity"]
    )
    stage("parity fixture", t0)

    report |= {
        "training": summary,
        "timings_s": timings,
        "total_minutes": round((time.monotonic() - started) / 60, 1),
        "bundle_bytes": sum(f.stat().st_size for f in args.out.iterdir()),
    }
    (work / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_score("held-out, default sim settings", report["default_settings"]))
    print(format_score("held-out, varied scan", report["varied_scan"]))
    noise = report["noise_session"]
    print(
        f"held-out noise session: {noise['unknown']}/{noise['beats']} beats unknown "
        f"(max confidence {noise['max_confidence']})"
    )
    cal = summary["calibration"]
    print(
        f"val: accuracy {summary['val']['accuracy']:.4f}, macro-F1 "
        f"{summary['val']['macro_f1']:.4f}; threshold {cal['threshold']:.4f}: val coverage "
        f"{cal['id_coverage']:.4f}, synthetic OOD rejection {cal['ood_rejection']:.4f}"
    )
    print(
        f"bundle {args.out}: {report['bundle_bytes'] / 1e6:.2f} MB; total "
        f"{report['total_minutes']} min; timings {json.dumps(timings)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
