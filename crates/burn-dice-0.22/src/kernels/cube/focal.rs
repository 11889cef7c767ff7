//! The focal term of `DiceFocalLoss` on the GPU (Lin et al., ICCV 2017, as MONAI's sigmoid
//! `FocalLoss`), per element: the statistics' kernels (`stats.rs`) sum `v · loss` per (sample,
//! class) beside `I`, `P`, `T` in their one pass forward, and add its gradient in their one
//! pass backward.
//!
//! Per element, with `t` the per-channel target (one-hot for class indices), `v` the validity
//! weight, `s = 2t − 1`, `z = −s·x`, `ls = ln σ` (the formulas of `burn-dice-core/src/cpu/focal.rs`):
//! `bce = x − x·t − ls(x)`, `m = e^(γ·ls(z))` (`(1 − p_t)^γ`), `a = α·t + (1 − α)(1 − t)` (or 1),
//! `loss = a·m·bce`, and `∂loss/∂x = a·m·(σ(x) − t − γ·s·σ(−z)·bce)`.

use cubecl::prelude::*;

use super::common::*;

/// The factors `(a·m, bce)` of one element: `loss = a·m·bce`.
#[derive(CubeType, Clone, Copy)]
struct Factors {
    am: f32,
    bce: f32,
}

#[cube]
fn factors(x: f32, t: f32, gamma: f32, alpha: f32, #[comptime] has_alpha: bool) -> Factors {
    let bce = x - x * t - log_sigmoid(x);
    let m = (gamma * log_sigmoid(-(2.0f32 * t - 1.0f32) * x)).exp();
    let mut a = 1.0f32;
    if has_alpha {
        a = alpha * t + (1.0f32 - alpha) * (1.0f32 - t);
    }
    Factors { am: a * m, bce }
}

/// `loss = a·m·bce` of the logit `x` against the target `t`.
#[cube]
pub(super) fn loss(x: f32, t: f32, gamma: f32, alpha: f32, #[comptime] has_alpha: bool) -> f32 {
    let e = factors(x, t, gamma, alpha, has_alpha);
    e.am * e.bce
}

/// `∂loss/∂x = a·m·(σ(x) − t − γ·s·σ(−z)·bce)`.
#[cube]
pub(super) fn d_loss(x: f32, t: f32, gamma: f32, alpha: f32, #[comptime] has_alpha: bool) -> f32 {
    let e = factors(x, t, gamma, alpha, has_alpha);
    let s = 2.0f32 * t - 1.0f32;
    let sigma_x = 1.0f32 / (1.0f32 + (-x).exp());
    let sigma_minus_z = 1.0f32 / (1.0f32 + (-s * x).exp());
    e.am * (sigma_x - t - gamma * s * sigma_minus_z * e.bce)
}
