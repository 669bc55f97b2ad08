//! One multiply-add, fused where the CPU does it in one instruction, else separate: a
//! software fused multiply-add (what `f32::mul_add` becomes on an x86-64 build without FMA)
//! is a C library call per value, far slower than the rounding it saves. The kernels of
//! [`super::depthwise`], [`super::pointwise`] and [`super::silu`] are generic over it, and
//! each CPU-specific copy picks the kind its instructions have.

/// `acc + w * x`, one way or the other.
pub trait MulAdd {
    /// `acc + w * x`.
    fn mul_add(acc: f32, w: f32, x: f32) -> f32;
}

/// Separate multiply and add: x86-64 code compiled without FMA.
#[cfg(not(target_arch = "aarch64"))]
pub struct Plain;

#[cfg(not(target_arch = "aarch64"))]
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(acc: f32, w: f32, x: f32) -> f32 {
        acc + w * x
    }
}

/// One fused multiply-add: code compiled for FMA on x86-64, and every aarch64.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub struct Fused;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(acc: f32, w: f32, x: f32) -> f32 {
        w.mul_add(x, acc)
    }
}
