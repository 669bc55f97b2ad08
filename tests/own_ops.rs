//! echoview's own ops in the real encoders: the depthwise convolution (`engine::depthwise`)
//! replaces every depthwise convolution of the committed bundles and the fused 1x1
//! convolution (`engine::pointwise`) every 1x1 convolution on a plane, the features match
//! tract's own to float reassociation, and the bundles' self-tests still pass; on small
//! graphs, the pointwise op takes in only the neighbours nothing else reads.

use std::path::Path;

use echoview::bundle::Bundle;
use echoview::engine::{Engine, TractEngine, TractOptions, depthwise, pointwise, squeeze};
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
    /// Depthwise convolutions in the encoder: one filter per input channel (the blocks'),
    /// or several (the stem's, one grey plane to 32 channels).
    depthwise: usize,
    /// Of those, the blocks' (as many input as output channels, each read by a
    /// squeeze-excitation block).
    blocks: usize,
    /// What `depthwise::substitute` did.
    own_depthwise: depthwise::Substitution,
    /// 1x1 convolutions on planes of at least 48 points (the squeeze-excitation ones work on
    /// one point and stay tract's).
    pointwise: usize,
    /// What `pointwise::substitute` did.
    own_pointwise: pointwise::Substitution,
    /// What `squeeze::substitute` did.
    own_squeeze: squeeze::Substitution,
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
    let convs: Vec<_> = typed
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::cnn::Conv>())
        .filter(|c| {
            let (i, o) = (c.pool_spec.input_channels, c.pool_spec.output_channels);
            c.group == i && o.is_multiple_of(i)
        })
        .map(|c| c.pool_spec.input_channels == c.pool_spec.output_channels && c.group > 1)
        .collect();
    let depthwise = convs.len();
    let blocks = convs.iter().filter(|block| **block).count();
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
    let own_squeeze = squeeze::substitute(&mut typed).expect("substitutes");
    typed
        .into_optimized()
        .expect("optimises with the ops in place");
    Substitutions {
        depthwise,
        blocks,
        own_depthwise,
        pointwise,
        own_pointwise,
        own_squeeze,
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
    // Every depthwise convolution of an EfficientNet (the stem too) is followed by a SiLU,
    // and every block's is read by a squeeze-excitation block.
    let d = &s.own_depthwise;
    assert!(
        d.fused_silu == d.replaced && d.fused_sums == s.blocks && s.blocks + 1 == s.depthwise,
        "{dir}: {d:?}, {} convolutions, {} in blocks",
        s.depthwise,
        s.blocks
    );
    let p = &s.own_pointwise;
    assert_eq!(p.replaced, s.pointwise, "{dir}: {p:?}");
    // Every EfficientNet block expands with a SiLU (but the first stage's, whose expansion
    // ratio is 1) and scales its projection's input; fusing none would pass the value checks.
    assert!(
        p.fused_silu > 0 && p.fused_scale > 0 && p.fused_residual > 0,
        "{dir}: {p:?}"
    );

    // Every block of an EfficientNet has a squeeze-excitation, after its depthwise convolution.
    assert_eq!(
        s.own_squeeze.replaced, s.blocks,
        "{dir}: {:?}",
        s.own_squeeze
    );

    let mut own = TractEngine::load_with(
        &bundle,
        TractOptions {
            own_depthwise: true,
            own_pointwise: true,
            own_squeeze_excitation: true,
        },
    )
    .expect("loads with our ops");
    let mut stock = TractEngine::load_with(
        &bundle,
        TractOptions {
            own_depthwise: false,
            own_pointwise: false,
            own_squeeze_excitation: false,
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

/// A small graph built as tract's decluttering leaves an EfficientNet's 1x1 convolutions:
/// input `x` `[1, 4, 8, 8]`, optionally scaled by a second input `s` `[1, 4, 1, 1]`, then the
/// `NIHW,OI->NOHW` einsum with 8 output channels, an addition of `bias`, then `tail`.
#[derive(Debug, Clone, Copy)]
enum Tail {
    /// A SiLU.
    Silu,
    /// A SiLU, with the biased values also a model output (so nothing may skip them).
    SiluAndBiasedOut,
    /// Addition of a third input `r` `[1, 8, 8, 8]`.
    Residual,
    /// Nothing.
    None,
}

/// Builds the graph; `bias_shape` is `[1, 8, 1, 1]` for a real bias.
fn graph(scaled: bool, bias_shape: &[usize], tail: Tail) -> TypedModel {
    use tract_onnx::tract_core::ops::{einsum::EinSum, math, nn};
    let mut m = TypedModel::default();
    let mut x = m.add_source("x", f32::fact([1, 4, 8, 8])).expect("source");
    if scaled {
        let s = m.add_source("s", f32::fact([1, 4, 1, 1])).expect("source");
        x = m.wire_node("scale", math::mul(), &[x, s]).expect("mul")[0];
    }
    let w = Tensor::from_shape(&[8, 4], &image(32)).expect("weights");
    let w = m.add_const("w", w).expect("const");
    let axes = "NIHW,OI->NOHW".parse().expect("axes");
    let y = m
        .wire_node("conv", EinSum::new(axes, f32::datum_type()), &[x, w])
        .expect("einsum")[0];
    let b = Tensor::from_shape(bias_shape, &image(8)[..bias_shape.iter().product()]).expect("bias");
    let b = m.add_const("bias", b).expect("const");
    let biased = m.wire_node("biased", math::add(), &[y, b]).expect("add")[0];
    let outputs = match tail {
        Tail::None => vec![biased],
        Tail::Silu => vec![
            m.wire_node("silu", nn::silu::silu(), &[biased])
                .expect("silu")[0],
        ],
        Tail::SiluAndBiasedOut => {
            let z = m
                .wire_node("silu", nn::silu::silu(), &[biased])
                .expect("silu")[0];
            vec![z, biased]
        }
        Tail::Residual => {
            let r = m.add_source("r", f32::fact([1, 8, 8, 8])).expect("source");
            vec![
                m.wire_node("residual", math::add(), &[biased, r])
                    .expect("add")[0],
            ]
        }
    };
    m.select_output_outlets(&outputs).expect("outputs");
    m
}

/// Runs `model` optimised on deterministic inputs, one per source.
fn outputs(model: TypedModel) -> Vec<Vec<f32>> {
    let inputs: TVec<TValue> = model
        .input_outlets()
        .expect("inputs")
        .iter()
        .map(|o| {
            let shape = model
                .outlet_fact(*o)
                .expect("fact")
                .shape
                .as_concrete()
                .expect("shape")
                .to_vec();
            let n = shape.iter().product();
            Tensor::from_shape(&shape, &image(n))
                .expect("input")
                .into_tvalue()
        })
        .collect();
    let plan = model
        .into_optimized()
        .expect("optimises")
        .into_runnable()
        .expect("plan");
    plan.run(inputs)
        .expect("runs")
        .iter()
        .map(|t| {
            t.try_as_plain_ram()
                .expect("plain")
                .as_slice::<f32>()
                .expect("f32")
                .to_vec()
        })
        .collect()
}

/// The pointwise op takes in exactly what it may: a per-channel bias, a SiLU or a residual no
/// one else reads, the squeeze-excitation scale; whatever it leaves, tract computes, and the
/// outputs equal tract's own in every case.
#[test]
fn pointwise_fuses_only_what_nothing_else_reads() {
    /// One graph and what the op must take in from it.
    struct Case {
        scaled: bool,
        bias_shape: &'static [usize],
        tail: Tail,
        /// The bias addition is taken in.
        bias: bool,
        /// `Substitution`'s fused_silu, fused_residual, fused_scale.
        fused: (usize, usize, usize),
    }
    const PER_CHANNEL: &[usize] = &[1, 8, 1, 1];
    // As many values as channels, but along the width: not a bias.
    const ALONG_WIDTH: &[usize] = &[1, 1, 1, 8];
    let case = |scaled, bias_shape, tail, bias, fused| Case {
        scaled,
        bias_shape,
        tail,
        bias,
        fused,
    };
    let cases = [
        case(false, PER_CHANNEL, Tail::Silu, true, (1, 0, 0)),
        case(true, PER_CHANNEL, Tail::Residual, true, (0, 1, 1)),
        case(false, PER_CHANNEL, Tail::None, true, (0, 0, 0)),
        // The biased values are an output: the SiLU must not swallow them.
        case(false, PER_CHANNEL, Tail::SiluAndBiasedOut, true, (0, 0, 0)),
        case(false, ALONG_WIDTH, Tail::Silu, false, (0, 0, 0)),
        case(true, ALONG_WIDTH, Tail::Residual, false, (0, 0, 1)),
    ];
    for (i, c) in cases.iter().enumerate() {
        let expected = outputs(graph(c.scaled, c.bias_shape, c.tail));
        let mut model = graph(c.scaled, c.bias_shape, c.tail);
        let done =
            pointwise::substitute(&mut model, pointwise::Kernel::best()).expect("substitutes");
        assert_eq!(done.replaced, 1, "case {i}");
        assert_eq!(
            (done.fused_silu, done.fused_residual, done.fused_scale),
            c.fused,
            "case {i}: {done:?}"
        );
        // A bias taken in leaves no addition of a constant behind.
        let adds_left = model.nodes().iter().filter(|n| n.name == "biased").count();
        assert_eq!(adds_left == 0, c.bias, "case {i}: bias taken in");
        let got = outputs(model);
        assert_eq!(got.len(), expected.len(), "case {i}");
        for (a, b) in got.iter().zip(&expected) {
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-5, "case {i}: outputs differ by {diff}");
        }
    }
}
