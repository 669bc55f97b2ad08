//! echoview's depthwise convolution (`engine::depthwise`) in the real encoders: it replaces
//! every depthwise convolution of the committed bundles, the features match tract's own to
//! float reassociation, and the bundles' self-tests still pass.

use std::path::Path;

use echoview::bundle::Bundle;
use echoview::engine::{Engine, TractEngine, TractOptions, depthwise};
use echoview::selftest;
use tract_onnx::prelude::*;

/// Deterministic image values (xorshift) of a plausible normalised range.
fn image(n: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_u32;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Depthwise convolutions in the bundle's decluttered encoder, and what `substitute` did.
fn substitution(bundle: &Bundle) -> (usize, depthwise::Substitution) {
    let m = &bundle.manifest;
    let mut model = tract_onnx::onnx()
        .model_for_path(bundle.encoder_path())
        .expect("loads");
    let shape = [
        1,
        m.input.channels as usize,
        m.input.height as usize,
        m.input.width as usize,
    ];
    model
        .set_input_fact(0, f32::fact(shape).into())
        .expect("input fact");
    let mut typed = model.into_typed().expect("types");
    depthwise::declutter_keeping_layout(&mut typed).expect("declutters");
    let depthwise = typed
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::cnn::Conv>())
        .filter(|c| c.group > 1 && c.group == c.pool_spec.input_channels)
        .count();
    let done = depthwise::substitute(&mut typed).expect("substitutes");
    typed
        .into_optimized()
        .expect("optimises with the op in place");
    (depthwise, done)
}

fn check(dir: &str) {
    let bundle = Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).expect("bundle");
    let (found, done) = substitution(&bundle);
    assert!(found > 0, "{dir} has no depthwise convolution to test");
    assert_eq!(
        done.replaced, found,
        "{dir}: left to tract: {:?}",
        done.kept
    );

    let mut own = TractEngine::load(&bundle).expect("loads with our op");
    let mut stock = TractEngine::load_with(
        &bundle,
        TractOptions {
            own_depthwise: false,
        },
    )
    .expect("loads with tract's");
    let m = &bundle.manifest;
    let pixels = (m.input.channels * m.input.width * m.input.height) as usize;
    let d = bundle.feature_dim();
    let (mut a, mut b) = (vec![0.0; d], vec![0.0; d]);
    let frame = image(pixels);
    own.encode(&frame, &mut a).expect("encodes");
    stock.encode(&frame, &mut b).expect("encodes");
    let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |s, (x, y)| s.max((x - y).abs()));
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "{dir}: features differ by {diff:e} (largest {scale:e})"
    );
    let report = selftest::run(&bundle, &mut own).expect("self-test passes");
    assert!(report.features_diff <= report.tolerance);
}

#[test]
fn demo_bundle_features_match_tract_and_pass_the_self_test() {
    check("models/demo");
}

#[test]
fn bench_bundle_features_match_tract_and_pass_the_self_test() {
    check("models/bench-b2-288");
}
