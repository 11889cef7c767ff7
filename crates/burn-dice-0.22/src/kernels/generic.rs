//! The generic path: every term of the family from burn ops alone, on every backend. This is
//! the readable reference that each kernel (`cpu/`, `cube/`) is tested against; autodiff gives
//! its gradients.
//!
//! Class-index targets are compared with each class index inside the sums (`labels == c`,
//! `[batch, class, pixels]`) rather than gathered and scatter-added into `[batch, class]`
//! tables: a scatter-add of every pixel into a handful of bins is what a GPU serializes (every
//! pixel of a class writes to the same address), while a comparison fused into a sum is an
//! element-wise map and a reduction, which every backend runs in parallel and a fusing backend
//! (burn-wgpu's default) runs without materializing the one-hot tensor.

use burn::tensor::{DType, Int, Tensor};

use super::input::{CeOptions, FlatTarget, FocalOptions, PreparedTarget, Terms};
use crate::activation::Activation;
use crate::numerics::{compute_dtype, in_dtype, log_sigmoid, log_softmax};

/// The target per channel, `[batch, class, pixels]` with `class` channels, in `dtype`: dense
/// targets as they are, class indices one-hot encoded (a comparison with each class index).
/// Pixels that do not count are not zeroed here.
pub(crate) fn per_channel(target: &PreparedTarget, classes: usize, dtype: DType) -> Tensor<3> {
    let t = match &target.target {
        FlatTarget::Dense(t) => t.clone(),
        FlatTarget::Indices(labels) => {
            let device = labels.device();
            let ids = Tensor::<1, Int>::arange(0..classes as i64, &device).reshape([1, classes, 1]);
            labels.clone().equal(ids).float()
        }
    };
    in_dtype(t, dtype)
}

/// The input in the type the sums are computed in ([`compute_dtype`]: `f32` for half-precision
/// inputs), with the pixels' weights in the same type.
fn widened(input: Tensor<3>, target: &PreparedTarget) -> (Tensor<3>, Option<Tensor<3>>) {
    let dtype = compute_dtype(input.dtype());
    let valid = target.valid.clone().map(|v| in_dtype(v, dtype));
    (in_dtype(input, dtype), valid)
}

/// The three `[batch, class]` sums `I`, `P` and `T` of the per-pixel [`Terms`] of `input`
/// (`[batch, class, pixels]`, raw) after `activation`, over the pixels that count (see
/// [`crate::stats`]). Their gradients are autodiff's: with [`Terms::SoftL1`], `P` and `T`
/// through burn's `abs` (whose backward is `sign`, `sign 0 = 0`) and `I` through its
/// subgradients, held constant (below).
pub(crate) fn class_stats(
    input: Tensor<3>,
    target: &PreparedTarget,
    activation: Activation,
    terms: Terms,
    loss: &str,
) -> [Tensor<2>; 3] {
    let [b, c, _] = input.dims();
    let (input, valid) = widened(input, target);
    let t = per_channel(target, c, input.dtype());
    let probs = activation.apply(input, loss);
    let (p, t) = match valid {
        Some(valid) => (probs * valid.clone(), t * valid),
        None => (probs, t),
    };
    let [intersection, p, t] = match terms {
        Terms::Linear => [p.clone() * t.clone(), p, t],
        Terms::Squared => [p.clone() * t.clone(), p.square(), t.square()],
        Terms::SoftL1 => {
            // `I = p·m_p + t·m_t` (`Terms::soft_intersection`), with the subgradients as
            // constants: exact where `(|p| + |t| − |p − t|)/2` cancels, and autodiff then gives
            // `∂I/∂p = m_p` as one term (PyTorch's subgradient). Through the three `abs` it
            // would add `±g_I/2` halves beside `g_P·sgn p`, which cancel in f32 and leave an
            // error of `1e-7·g_I` where `∂I/∂p = 0` (a class whose target is 0 everywhere:
            // its gradient `g_P` alone is ~1e-5).
            let (pd, td) = (p.clone().detach(), t.clone().detach());
            let diff = (pd.clone() - td.clone()).sign();
            let m_p = (pd.sign() - diff.clone()).mul_scalar(0.5);
            let m_t = (td.sign() + diff).mul_scalar(0.5);
            let i = p.clone() * m_p + t.clone() * m_t;
            [i, p.abs(), t.abs()]
        }
    };
    [intersection, p, t].map(|s| s.sum_dim(2).reshape([b, c]))
}

/// Per sample, the sum of the pixel cross-entropies and the sum of their weights (`[batch]`
/// each) of the logits `input` (formulas: `burn-dice-core/src/cpu/ce.rs`).
pub(crate) fn ce_sums(
    input: Tensor<3>,
    target: &PreparedTarget,
    options: &CeOptions,
) -> [Tensor<1>; 2] {
    let [b, c, s] = input.dims();
    let (input, valid) = widened(input, target);
    let dtype = input.dtype();
    let class_weight = options.class_weight.clone().map(|w| in_dtype(w, dtype));
    let (loss, norm) = if c == 1 {
        let t = per_channel(target, 1, dtype);
        let positive = log_sigmoid(input.clone()) * t.clone();
        let positive = positive.mul_scalar(options.pos_weight);
        let negative = log_sigmoid(input.neg()) * t.clone().neg().add_scalar(1.0);
        ((positive + negative).neg(), t.ones_like())
    } else {
        let logp = log_softmax(input, 1);
        let eps = options.label_smoothing;
        let weighted = match &class_weight {
            Some(w) => logp.clone() * w.clone().reshape([1, c, 1]),
            None => logp.clone(),
        };
        match &target.target {
            FlatTarget::Indices(labels) => {
                let picked = logp.gather(1, labels.clone());
                let w_y = match &class_weight {
                    Some(w) => w
                        .clone()
                        .select(0, labels.clone().reshape([b * s]))
                        .reshape([b, 1, s]),
                    None => picked.ones_like(),
                };
                let mut loss = (picked * w_y.clone()).mul_scalar(1.0 - eps);
                if eps > 0.0 {
                    loss = loss + weighted.sum_dim(1).mul_scalar(eps / c as f64);
                }
                (loss.neg(), w_y)
            }
            FlatTarget::Dense(t) => {
                let t = in_dtype(t.clone(), dtype);
                let t = if eps > 0.0 {
                    t.mul_scalar(1.0 - eps).add_scalar(eps / c as f64)
                } else {
                    t
                };
                let loss = (weighted * t).sum_dim(1).neg();
                let norm = loss.ones_like();
                (loss, norm)
            }
        }
    };
    let (loss, norm) = match valid {
        Some(valid) => (loss * valid.clone(), norm * valid),
        None => (loss, norm),
    };
    [loss, norm].map(|t| t.sum_dim(2).reshape([b]))
}

/// Per (sample, class), the sigmoid focal term summed over the pixels that count, `[batch,
/// class]` (formulas: `burn-dice-core/src/cpu/focal.rs`).
pub(crate) fn focal_sums(
    input: Tensor<3>,
    target: &PreparedTarget,
    options: FocalOptions,
) -> Tensor<2> {
    let [b, c, _] = input.dims();
    let (x, valid) = widened(input, target);
    let t = per_channel(target, c, x.dtype());
    let bce = x.clone() - x.clone() * t.clone() - log_sigmoid(x.clone());
    let sign = t.clone().mul_scalar(2.0).sub_scalar(1.0);
    let modulation = log_sigmoid(x.neg() * sign).mul_scalar(options.gamma).exp();
    let mut loss = modulation * bce;
    if let Some(alpha) = options.alpha {
        loss = loss * t.mul_scalar(2.0 * alpha - 1.0).add_scalar(1.0 - alpha);
    }
    match valid {
        Some(valid) => loss * valid,
        None => loss,
    }
    .sum_dim(2)
    .reshape([b, c])
}
