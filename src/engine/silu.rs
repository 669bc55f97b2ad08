//! SiLU (`x * sigmoid(x)`), the EfficientNet activation, as echoview's own ops compute it when
//! they fuse it into a convolution.
//!
//! The standard library's `exp` is a call per value, which stops the compiler from
//! vectorising the loop around it; this one is plain arithmetic the compiler turns into
//! vector instructions (and the AVX-512 kernel of [`super::pointwise`] uses the same steps in
//! intrinsics): `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `exp(r)` by its Taylor polynomial to
//! degree 7 (truncation error below 2e-9 there), times `2^n` built from its exponent bits.
//!
//! The steps are multiply-adds of the caller's kind ([`super::mul_add`]): fused in the code
//! compiled for AVX2+FMA or AVX-512 and on aarch64, separate elsewhere.

use super::mul_add::MulAdd;

/// `ln 2` in two parts: the high part has so few bits that `n * LN2_HI` is exact for every
/// `n` used, and the low part keeps the bits it drops.
pub const LN2_HI: f32 = 0.693_145_75;
/// See [`LN2_HI`].
pub const LN2_LO: f32 = 1.428_606_8e-6;
/// Inputs are clamped to this range, where `exp` is finite and `2^n` a normal number.
pub const EXP_MIN: f32 = -87.0;
/// See [`EXP_MIN`].
pub const EXP_MAX: f32 = 88.0;
/// Taylor coefficients of `exp(r)`, highest degree first, for Horner's rule.
pub const EXP_TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `exp(x)` to about one unit in the last place, for `x` in the clamped range; NaN stays NaN.
#[inline(always)]
pub fn exp<M: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = M::mul_add(M::mul_add(x, -n, LN2_HI), -n, LN2_LO);
    let mut p = EXP_TAYLOR[0];
    for c in &EXP_TAYLOR[1..] {
        p = M::mul_add(*c, p, r);
    }
    // 2^n from its exponent bits. n is an integer in [-126, 127] after the clamp, so the
    // biased exponent is a normal one. It is read out of the mantissa of `n + 1.5 * 2^23`
    // rather than by `as i32`, whose saturating conversion the compiler does one lane at a
    // time (a NaN gives some finite power, and the NaN in `p` carries through).
    const SHIFTER: f32 = 12_582_912.0;
    let k = (n + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits());
    p * f32::from_bits(k.wrapping_add(127) << 23)
}

/// `x * sigmoid(x) = x / (1 + exp(-x))`.
#[inline(always)]
pub fn silu<M: MulAdd>(x: f32) -> f32 {
    x / (1.0 + exp::<M>(-x))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    use crate::engine::mul_add::Fused;
    #[cfg(not(target_arch = "aarch64"))]
    use crate::engine::mul_add::Plain;

    /// Both kinds of multiply-add this target has.
    #[test]
    fn matches_the_definition() {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        check::<Fused>();
        #[cfg(not(target_arch = "aarch64"))]
        check::<Plain>();
    }

    /// Against the f64 definition over the whole useful range, in steps fine enough to cross
    /// every rounding boundary of `n`.
    fn check<M: MulAdd>() {
        let mut x = -100.0f32;
        while x < 100.0 {
            let want_exp = (x as f64).clamp(EXP_MIN as f64, EXP_MAX as f64).exp();
            let got = exp::<M>(x) as f64;
            assert!(
                (got - want_exp).abs() <= 3e-7 * want_exp,
                "exp({x}) = {got}, want {want_exp}"
            );
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu::<M>(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert!(silu::<M>(f32::NAN).is_nan());
        assert!(exp::<M>(f32::NAN).is_nan());
    }
}
