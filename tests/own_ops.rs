//! echoview's own ops in the real encoders: the depthwise convolution (`engine::depthwise`)
//! replaces every depthwise convolution of the committed bundles and the fused 1x1
//! convolution (`engine::pointwise`) every 1x1 convolution on a plane, the features match
//! tract's own to float reassociation, and the bundles' self-tests still pass.

use std::path::Path;

use echoview::bundle::Bundle;
use echoview::engine::{Engine, TractEngine, TractOptions, depthwise, pointwise};
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

/// What the two substitutions found and did in the bundle's decluttered encoder.
struct Substitutions {
    /// Depthwise convolutions in the encoder.
    depthwise: usize,
    /// What `depthwise::substitute` did.
    own_depthwise: depthwise::Substitution,
    /// 1x1 convolutions on planes of at least 48 points (the squeeze-excitation ones work on
    /// one point and stay tract's).
    pointwise: usize,
    /// What `pointwise::substitute` did.
    own_pointwise: pointwise::Substitution,
}

/// Runs both substitutions on the bundle's encoder, as the engine does, and optimises.
fn substitution(bundle: &Bundle) -> Substitutions {
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
    let own_depthwise = depthwise::substitute(&mut typed).expect("substitutes");
    let pointwise = typed
        .nodes()
        .iter()
        .filter(|n| {
            n.op_as::<tract_onnx::tract_core::ops::einsum::EinSum>()
                .is_some_and(|e| e.axes.to_string() == "NIHW,OI->NOHW")
                && typed
                    .outlet_fact(n.inputs[0])
                    .ok()
                    .and_then(|f| f.shape.as_concrete().map(|s| s[2] * s[3]))
                    .is_some_and(|points| points >= 48)
        })
        .count();
    let own_pointwise =
        pointwise::substitute(&mut typed, pointwise::Kernel::best()).expect("substitutes");
    typed
        .into_optimized()
        .expect("optimises with the ops in place");
    Substitutions {
        depthwise,
        own_depthwise,
        pointwise,
        own_pointwise,
    }
}

fn check(dir: &str) {
    let bundle = Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).expect("bundle");
    let s = substitution(&bundle);
    assert!(
        s.depthwise > 0,
        "{dir} has no depthwise convolution to test"
    );
    assert_eq!(
        s.own_depthwise.replaced, s.depthwise,
        "{dir}: left to tract: {:?}",
        s.own_depthwise.kept
    );
    assert!(s.pointwise > 0, "{dir} has no 1x1 convolution to test");
    // Every depthwise convolution of an EfficientNet is followed by a SiLU and read by a
    // squeeze-excitation block.
    let d = &s.own_depthwise;
    assert!(
        d.fused_silu == d.replaced && d.fused_sums == d.replaced,
        "{dir}: {d:?}"
    );
    let p = &s.own_pointwise;
    assert_eq!(p.replaced, s.pointwise, "{dir}: {p:?}");
    // Every EfficientNet block expands with a SiLU (but the first stage's, whose expansion
    // ratio is 1) and scales its projection's input; fusing none would pass the value checks.
    assert!(
        p.fused_silu > 0 && p.fused_scale > 0 && p.fused_residual > 0,
        "{dir}: {p:?}"
    );

    let mut own = TractEngine::load_with(
        &bundle,
        TractOptions {
            own_depthwise: true,
            own_pointwise: true,
        },
    )
    .expect("loads with our ops");
    let mut stock = TractEngine::load_with(
        &bundle,
        TractOptions {
            own_depthwise: false,
            own_pointwise: false,
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
