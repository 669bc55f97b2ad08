//! Encoder per frame with tract's depthwise convolutions and with echoview's
//! (`engine::depthwise`), interleaved in one process, plus a per-op profile of each plan and
//! the largest difference between their features.
//!
//! `cargo run --release --example depthwise_ab -- [BUNDLE_DIR] [--threads N] [--runs N]`
//! (default `models/bench-b2-288`, 1 thread, 20 runs). Prints medians in ms per frame; the
//! two plans alternate run by run, so a noisy machine slows both alike.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use echoview::bundle::Bundle;
use echoview::engine::{self, depthwise};
use tract_onnx::prelude::*;
use tract_onnx::tract_core;

/// One encoder plan, as `TractEngine` builds it (fixed input shape, optimised).
fn plan(bundle: &Bundle, own: bool) -> anyhow::Result<(TypedSimpleState, usize)> {
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
    let mut replaced = 0;
    if own {
        depthwise::declutter_keeping_layout(&mut typed)?;
        let s = depthwise::substitute(&mut typed)?;
        for (name, why) in &s.kept {
            println!("kept by tract: {name}: {why}");
        }
        replaced = s.replaced;
    }
    let plan = typed.into_optimized()?.into_runnable()?;
    Ok((TypedSimpleState::new(&plan)?, replaced))
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
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            _ => dir = a,
        }
    }
    engine::set_threads(threads);
    let bundle = Bundle::load(dir.as_ref())?;
    let (mut stock, _) = plan(&bundle, false)?;
    let (mut own, replaced) = plan(&bundle, true)?;
    println!("{dir}: {replaced} depthwise convolutions replaced, {threads} thread(s)");
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
    let a = stock.run(tvec!(input.clone().into_tvalue()))?;
    let b = own.run(tvec!(input.clone().into_tvalue()))?;
    let (a, b) = (a[0].try_as_plain_ram()?, b[0].try_as_plain_ram()?);
    let (a, b) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!(
        "features: max |diff| {diff:.3e}, relative to max |value| {:.3e}",
        diff / scale
    );

    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        stock.run(tvec!(input.clone().into_tvalue()))?;
        own.run(tvec!(input.clone().into_tvalue()))?;
    }
    for _ in 0..runs {
        let t = Instant::now();
        stock.run(tvec!(input.clone().into_tvalue()))?;
        ta.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        own.run(tvec!(input.clone().into_tvalue()))?;
        tb.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    println!(
        "encoder ms/frame, median of {runs}: tract {ma:.1}, with echoview depthwise {mb:.1} ({:.2}x faster)",
        ma / mb
    );

    let profile_runs = runs.clamp(1, 5);
    for (label, state) in [("tract", &mut stock), ("echoview depthwise", &mut own)] {
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
