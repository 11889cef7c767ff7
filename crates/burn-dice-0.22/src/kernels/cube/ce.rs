//! The cross-entropy term of `DiceCELoss` on the GPU, per (pixel, class): the statistics'
//! kernels (`stats.rs`) sum it beside `I`, `P`, `T` in their one pass forward, and add its
//! gradient in their one pass backward.
//!
//! Per pixel, with `w` the class weights (ones without `ce_weight`), `ε` the label smoothing,
//! `C` the class count, `v` the validity weight, `t` the target of each class (one-hot for class
//! indices), `t' = (1 − ε)·t + ε/C` and `log p = x − lse`, `lse = max + ln Σ_c e^(x_c − max)`
//! (the formulas of `burn-dice-core/src/cpu/ce.rs`, written per class):
//! - `loss = v·Σ_c ℓ_c` with `ℓ_c = −w_c·t'_c·log p_c` (for class indices `y` this is
//!   `−(1 − ε)·w_y·log p_y − ε/C·Σ_c w_c log p_c`);
//! - `norm = v·Σ_c w_c·t_c = v·w_y` for class indices, `v` for dense targets;
//! - `∂(Σ_c g_c ℓ_c)/∂x_k = p_k·Σ_c g_c w_c t'_c − g_k w_k t'_k`, `p` the softmax;
//! - one channel (binary cross-entropy with logits, `π` the positive weight):
//!   `loss = −v·(π·t·ln σ(x) + (1 − t)·ln σ(−x))`, `norm = v`,
//!   `∂loss/∂x = v·(σ(x)·(π·t + 1 − t) − π·t)`.

use cubecl::prelude::*;

use super::common::*;

/// The weight `w_c` of class `c` (1 without class weights).
#[cube]
pub(super) fn class_weight<F: Float>(
    weights: &Tensor<F>,
    c: usize,
    #[comptime] has_weight: bool,
) -> f32 {
    let mut w = 1.0f32;
    if has_weight {
        w = f32::cast_from(weights[c]);
    }
    w
}

/// `lse = ln Σ_c e^(x_c)` of each lane from the pixels' softmax normalizers.
#[cube]
pub(super) fn log_sum_exp<N: Size>(norms: &Norms<N>) -> Vector<f32, N> {
    norms.max - norms.inv_sum.ln()
}

/// The smoothed target `t' = (1 − ε)·t + ε/C` (`smooth` = `ε/C`).
#[cube]
pub(super) fn smoothed(t: f32, eps: f32, smooth: f32) -> f32 {
    t * (1.0f32 - eps) + smooth
}

/// `ℓ_c = −w_c·t'_c·(x_c − lse)`.
#[cube]
pub(super) fn term(x: f32, lse: f32, t_smoothed: f32, w_c: f32) -> f32 {
    -(w_c * t_smoothed * (x - lse))
}

/// `∂(Σ_c g_c ℓ_c)/∂x_k = p_k·total − g_k·w_k·t'_k`, with `total = Σ_c g_c w_c t'_c`.
#[cube]
pub(super) fn d_term(p: f32, g: f32, w_k: f32, t_smoothed: f32, total: f32) -> f32 {
    p * total - g * w_k * t_smoothed
}

/// The binary cross-entropy with logits `−(π·t·ln σ(x) + (1 − t)·ln σ(−x))`.
#[cube]
pub(super) fn binary(x: f32, t: f32, pos_weight: f32) -> f32 {
    -(pos_weight * t * log_sigmoid(x) + (1.0f32 - t) * log_sigmoid(-x))
}

/// `∂`[`binary`]`/∂x = σ(x)·(π·t + 1 − t) − π·t`.
#[cube]
pub(super) fn d_binary(x: f32, t: f32, pos_weight: f32) -> f32 {
    let sigma = 1.0f32 / (1.0f32 + (-x).exp());
    sigma * (pos_weight * t + 1.0f32 - t) - pos_weight * t
}
