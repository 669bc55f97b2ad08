//! Encoder per frame with tract's own convolutions, with echoview's depthwise op
//! (`engine::depthwise`), with its 1x1 op too (`engine::pointwise`), and with its
//! squeeze-excitation op as well (`engine::squeeze`),
//! interleaved in one process, plus a per-op profile of each plan and the largest difference
//! between their features and tract's.
//!
//! `cargo run --release --example encoder_ab -- [BUNDLE_DIR] [--threads N] [--runs N]
//! [--kernel portable|avx2|avx512]` (default `models/bench-b2-288`, 1 thread, 20 runs, the
//! pointwise op's fastest kernel on this CPU). Prints medians in ms per frame; the plans take
//! turns run by run, so a noisy machine slows them alike.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use echoview::bundle::Bundle;
use echoview::engine::{self, depthwise, pointwise, squeeze};
use tract_onnx::prelude::*;
use tract_onnx::tract_core;

/// Which of echoview's ops a plan uses.
#[derive(Clone, Copy)]
struct Ops {
    /// `engine::depthwise`.
    depthwise: bool,
    /// `engine::pointwise`, with this kernel.
    pointwise: Option<pointwise::Kernel>,
    /// `engine::squeeze`.
    squeeze: bool,
}

/// One encoder plan, as `TractEngine` builds it (fixed input shape, optimised).
fn plan(bundle: &Bundle, ops: Ops) -> anyhow::Result<TypedSimpleState> {
    let m = &bundle.manifest;
    let mut model = tract_onnx::onnx().model_for_path(bundle.encoder_path())?;
    let shape = [
        1,
        m.input.channels as usize,
        m.input.height as usize,
        m.input.width as usize,
    ];
    model.set_input_fact(0, f32::fact(shape).into())?;
    let mut typed = model.into_typed()?;
    if ops.depthwise || ops.pointwise.is_some() || ops.squeeze {
        depthwise::declutter_keeping_layout(&mut typed)?;
    }
    if ops.depthwise {
        let s = depthwise::substitute(&mut typed)?;
        for (name, why) in &s.kept {
            println!("depthwise kept by tract: {name}: {why}");
        }
        println!("{} depthwise convolutions replaced", s.replaced);
    }
    if let Some(kernel) = ops.pointwise {
        let s = pointwise::substitute(&mut typed, kernel)?;
        println!("pointwise ({kernel:?} kernel): {s:?}");
    }
    if ops.squeeze {
        println!("squeeze-excitation: {:?}", squeeze::substitute(&mut typed)?);
    }
    let plan = typed.into_optimized()?.into_runnable()?;
    TypedSimpleState::new(&plan)
}

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `state` once, timing each op kind into `per` and each node into `nodes`.
fn profiled(
    state: &mut TypedSimpleState,
    input: &Tensor,
    per: &mut BTreeMap<String, f64>,
    nodes: &mut BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    state.run_plan_with_eval(
        tvec!(input.clone().into_tvalue()),
        |ctx, st, node, inputs| {
            let shape = inputs
                .first()
                .map(|v| format!("{:?}", v.shape()))
                .unwrap_or_default();
            let t = Instant::now();
            let r = tract_core::plan::eval(ctx, st, node, inputs);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            *per.entry(node.op().name().to_string()).or_default() += ms;
            *nodes
                .entry(format!("{} {} {shape}", node.op().name(), node.name))
                .or_default() += ms;
            r
        },
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut dir = "models/bench-b2-288".to_string();
    let (mut threads, mut runs) = (1usize, 20usize);
    let mut kernel = pointwise::Kernel::best();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--kernel" => {
                kernel = match args.next().as_deref() {
                    Some("portable") => pointwise::Kernel::Portable,
                    Some("avx2") => pointwise::Kernel::Avx2Fma,
                    Some("avx512") => pointwise::Kernel::Avx512,
                    other => anyhow::bail!("--kernel portable|avx2|avx512, not {other:?}"),
                }
            }
            _ => dir = a,
        }
    }
    engine::set_threads(threads);
    let bundle = Bundle::load(dir.as_ref())?;
    let ops = |depthwise, pointwise, squeeze| Ops {
        depthwise,
        pointwise,
        squeeze,
    };
    let configs = [
        ("tract", ops(false, None, false)),
        ("+depthwise", ops(true, None, false)),
        ("+depthwise+pointwise", ops(true, Some(kernel), false)),
        ("+all three", ops(true, Some(kernel), true)),
    ];
    let mut plans = Vec::new();
    for (label, ops) in configs {
        plans.push((label, plan(&bundle, ops)?));
    }
    println!("{dir}: {threads} thread(s)");
    let m = &bundle.manifest;
    let shape = [
        1,
        m.input.channels as usize,
        m.input.height as usize,
        m.input.width as usize,
    ];
    // A fixed pseudo-random image: timing does not depend on the values, the comparison does.
    let mut seed = 0x2545_f491_u32;
    let image: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect();
    let input = Tensor::from_shape(&shape, &image)?;
    let features = |state: &mut TypedSimpleState| -> anyhow::Result<Vec<f32>> {
        let out = state.run(tvec!(input.clone().into_tvalue()))?;
        Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    };
    let reference = features(&mut plans[0].1)?;
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (label, state) in plans.iter_mut().skip(1) {
        let ours = features(state)?;
        let diff = reference
            .iter()
            .zip(&ours)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!(
            "features, {label}: max |diff| from tract {diff:.3e}, relative to max |value| {:.3e}",
            diff / scale
        );
    }

    let mut times = vec![Vec::new(); plans.len()];
    for _ in 0..2 {
        for (_, state) in plans.iter_mut() {
            state.run(tvec!(input.clone().into_tvalue()))?;
        }
    }
    for _ in 0..runs {
        for ((_, state), t) in plans.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            state.run(tvec!(input.clone().into_tvalue()))?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    for ((label, _), m) in plans.iter().zip(&medians) {
        println!(
            "encoder ms/frame, median of {runs}: {label:22} {m:6.1} ({:.2}x tract's speed)",
            medians[0] / m
        );
    }

    let profile_runs = runs.clamp(1, 5);
    for (label, state) in plans.iter_mut() {
        let (mut per, mut nodes) = (BTreeMap::new(), BTreeMap::new());
        for _ in 0..profile_runs {
            profiled(state, &input, &mut per, &mut nodes)?;
        }
        let total: f64 = per.values().sum();
        let mut rows: Vec<_> = per.into_iter().collect();
        rows.sort_by(|x, y| y.1.total_cmp(&x.1));
        println!(
            "profile, {label} (ms/frame over {profile_runs} runs, total {:.1}):",
            total / profile_runs as f64
        );
        for (op, ms) in rows.iter().take(8) {
            println!(
                "  {op:28} {:7.2} ms {:5.1}%",
                ms / profile_runs as f64,
                100.0 * ms / total
            );
        }
        let mut rows: Vec<_> = nodes.into_iter().collect();
        rows.sort_by(|x, y| y.1.total_cmp(&x.1));
        println!("  top nodes:");
        for (node, ms) in rows.iter().take(12) {
            println!("    {:7.2} ms  {node}", ms / profile_runs as f64);
        }
    }
    Ok(())
}
