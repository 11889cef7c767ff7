//! Numerically careful building blocks, made only of burn tensor ops so they differentiate on
//! every backend.
//!
//! Two burn 0.21 behaviours motivate them: autodiff differentiates `a / b` and `ln(x)` through
//! `recip`, which burn-ndarray computes in f32 with an approximate SIMD reciprocal (about 5e-5
//! relative error), and `sigmoid` computes in f32 for every float type. The functions here keep
//! the gradients as exact as the forward values.

use burn::tensor::activation::relu;
use burn::tensor::{backend::Backend, DType, Tensor};

/// The element type the family computes its sums and ratios in, for an input of `dtype`: `f32`
/// for the half types, the input's own otherwise. A sum of `f16` values passes 65,504, the
/// largest `f16`, on one 256 × 256 class of ones (and stops counting whole pixels at 2,048);
/// `bf16` keeps 8 bits of precision. So half-precision inputs are read as they are and every
/// sum, ratio and gradient inside the loss is `f32`; the loss is returned in the input's type.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// `t` in `dtype`: itself when it already is, else a cast (autodiff casts the gradient back).
pub(crate) fn in_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// The logistic sigmoid in the input's own precision.
///
/// burn's `sigmoid` is one fused op (fast, and exact to f32 precision) but computes in f32 for
/// every float type; an f64 input goes through a stable composite instead,
/// `z = exp(−|x|)`, `σ(x) = 1/(1 + z)` for `x ≥ 0` and `z/(1 + z)` otherwise, which neither
/// overflows nor loses f64 precision.
pub(crate) fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() != DType::F64 {
        return burn::tensor::activation::sigmoid(x);
    }
    let negative = x.clone().lower_elem(0.0);
    let z = x.abs().neg().exp();
    let r = reciprocal(z.clone().add_scalar(1.0));
    r.clone().mask_where(negative, z * r)
}

/// `1 / x`, with a gradient as exact as the backend's division.
///
/// burn's autodiff differentiates `a / b` through `recip(b)` and, on burn-ndarray, `recip` of an
/// f32 tensor is a SIMD approximation with a relative error of about 5e-5; `1 / x` written as a
/// division of a constant differentiates through `-1 / x²` instead, which is exact.
pub(crate) fn reciprocal<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.ones_like() / x
}

/// Softmax over `dim` with a max shift for stability, normalized through [`reciprocal`] so that
/// its gradient keeps f32 precision on every backend (burn's own `softmax` loses about 1e-4
/// relative on burn-ndarray's f32 gradients, see [`reciprocal`]).
pub(crate) fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let max = x.clone().detach().max_dim(dim);
    let exp = (x - max).exp();
    let sum = exp.clone().sum_dim(dim);
    exp * reciprocal(sum)
}

/// `1 − numerator / denominator`, the form every ratio loss of the family takes, through the
/// exact [`reciprocal`].
pub(crate) fn one_minus_ratio<B: Backend, const D: usize>(
    numerator: Tensor<B, D>,
    denominator: Tensor<B, D>,
) -> Tensor<B, D> {
    (numerator * reciprocal(denominator)).neg().add_scalar(1.0)
}

/// Natural logarithm whose gradient `1/x` is computed exactly (see [`reciprocal`]).
///
/// The value is `ln(x)`; the gradient flows through `(x − x̄)·(1/x̄)` with `x̄` the detached
/// input, a term that is 0 in the forward pass. `x = 0` gives `−∞` with a large finite gradient.
pub(crate) fn ln<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let detached = x.clone().detach();
    let slope = reciprocal(detached.clone().clamp_min(f32::MIN_POSITIVE));
    detached.clone().log() + (x - detached) * slope
}

/// `ln softmax(x)` over `dim`: `x − max − ln Σ exp(x − max)`.
pub(crate) fn log_softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let max = x.clone().detach().max_dim(dim);
    let shifted = x - max;
    let sum = shifted.clone().exp().sum_dim(dim);
    shifted - ln(sum)
}

/// `ln σ(x) = min(x, 0) − ln(1 + exp(−|x|))`, stable for any `x` (never `ln(σ(x))`).
///
/// Written with `relu` (`min(x, 0) = x − relu(x)`, `−|x| = x − 2·relu(x)`) so that the gradient
/// at `x = 0` is the exact `1/2` whichever sub-gradient the backend gives `relu` there.
pub(crate) fn log_sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let r = relu(x.clone());
    let neg_abs = x.clone() - r.clone().mul_scalar(2.0);
    (x - r) - ln(neg_abs.exp().add_scalar(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{autodiff, device, TestBackend};
    use burn::tensor::TensorData;

    type A = burn_autodiff::Autodiff<TestBackend>;

    /// The gradient of `Σ w·softmax(x)` in f32 against the closed form `p·(w − Σ p·w)` in f64:
    /// burn's own softmax is about 1e-4 off on burn-ndarray (its approximate f32 `recip`).
    #[test]
    fn softmax_gradient_keeps_f32_precision() {
        let device = autodiff();
        let (c, n) = (4usize, 256usize);
        let xs: Vec<f32> = (0..c * n)
            .map(|i| ((i as f32) * 0.731).sin() * 3.0)
            .collect();
        let ws: Vec<f32> = (0..c * n).map(|i| ((i as f32) * 1.37).cos()).collect();
        let x = Tensor::<A, 3>::from_data(TensorData::new(xs.clone(), [1, c, n]), &device)
            .require_grad();
        let w = Tensor::<A, 3>::from_data(TensorData::new(ws.clone(), [1, c, n]), &device);
        let grads = (softmax(x.clone(), 1) * w).sum().backward();
        let got = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let mut worst = 0.0f64;
        for px in 0..n {
            let e: Vec<f64> = (0..c).map(|k| (xs[k * n + px] as f64).exp()).collect();
            let z: f64 = e.iter().sum();
            let pw: f64 = (0..c).map(|k| e[k] / z * ws[k * n + px] as f64).sum();
            for k in 0..c {
                let exact = e[k] / z * (ws[k * n + px] as f64 - pw);
                worst = worst.max((got[k * n + px] as f64 - exact).abs());
            }
        }
        assert!(worst < 1e-6, "softmax gradient off by {worst:e}");
    }

    /// `d/dx Σ w·ln σ(x)` against `w·σ(−x)`, across saturation and at 0.
    #[test]
    fn log_sigmoid_is_stable_and_exact() {
        let device = autodiff();
        let xs = [-1e4f32, -60.0, -3.0, -1e-3, 0.0, 1e-3, 2.5, 40.0, 1e4];
        let x = Tensor::<A, 1>::from_floats(xs, &device).require_grad();
        let y = log_sigmoid(x.clone());
        let values = y.clone().into_data().into_vec::<f32>().unwrap();
        let grads = y.sum().backward();
        let got = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for (i, &v) in xs.iter().enumerate() {
            let v = v as f64;
            let exact = if v < 0.0 {
                v - (1.0 + v.exp()).ln()
            } else {
                -(1.0 + (-v).exp()).ln()
            };
            let slope = 1.0 / (1.0 + v.exp());
            assert!(
                (values[i] as f64 - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                "ln σ({v})"
            );
            assert!(
                (got[i] as f64 - slope).abs() < 1e-7,
                "d ln σ({v}): {} vs {slope}",
                got[i]
            );
        }
    }

    #[test]
    fn log_softmax_and_ln() {
        let device = device();
        let x = Tensor::<A, 2>::from_floats([[1.0, 2.0, 3.0], [1e4, 0.0, -1e4]], &device);
        let l = log_softmax(x, 1).into_data().into_vec::<f32>().unwrap();
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (k, v) in [1.0 - z, 2.0 - z, 3.0 - z, 0.0, -1e4, -2e4]
            .iter()
            .enumerate()
        {
            assert!(
                (l[k] as f64 - v).abs() < 1e-5 * v.abs().max(1.0),
                "{} vs {v}",
                l[k]
            );
        }
        let zero = ln(Tensor::<A, 1>::from_floats([0.0], &device)).into_scalar();
        assert_eq!(zero, f32::NEG_INFINITY);
    }
}
