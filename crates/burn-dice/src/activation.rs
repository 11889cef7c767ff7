//! The activation applied to the network's raw output before any statistic is taken.

use burn::config::Config;
use burn::tensor::{backend::Backend, DType, Tensor};

/// Activation applied to `input` before the loss is computed (MONAI's `sigmoid=` / `softmax=`).
///
/// It is always the first step of a loss: activation, then one-hot of class-index targets, then
/// dropping the background channel, then the reduction.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `input` already holds probabilities (or is compared as is): no activation.
    None,
    /// Element-wise logistic sigmoid: binary and multi-label segmentation.
    Sigmoid,
    /// Softmax over the class dimension (dim 1): mutually exclusive classes. Needs at least two
    /// channels (on one channel it would be the constant 1).
    Softmax,
}

impl Activation {
    /// Applies the activation to a `[batch, class, ...]` tensor.
    ///
    /// `loss` names the caller in the panic message.
    ///
    /// # Panics
    /// With [`Activation::Softmax`] on a single-channel input.
    pub fn apply<B: Backend, const D: usize>(
        self,
        input: Tensor<B, D>,
        loss: &str,
    ) -> Tensor<B, D> {
        match self {
            Activation::None => input,
            Activation::Sigmoid => sigmoid(input),
            Activation::Softmax => {
                let channels = input.dims()[1];
                assert!(
                    channels > 1,
                    "{loss}: `activation` = Softmax needs `input` with at least 2 channels \
                     (dim 1), got {channels}: softmax over one channel is the constant 1. \
                     Use Activation::Sigmoid for a single-channel (binary) output."
                );
                softmax(input, 1)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TestBackend;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn softmax_is_over_the_class_dim() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 3>::from_floats(
            [[[0.0, 1.0], [0.0, 3.0]], [[2.0, -1.0], [2.0, 0.0]]],
            &device,
        );
        let p = Activation::Softmax.apply(x, "test");
        let sums = p.clone().sum_dim(1);
        sums.into_data().assert_approx_eq::<f32>(
            &TensorData::from([[[1.0, 1.0]], [[1.0, 1.0]]]),
            Tolerance::default(),
        );
        let first = p.slice([0..1, 0..1, 1..2]).into_scalar();
        let expected = 1.0 / (1.0 + 2f32.exp());
        assert!((first - expected).abs() < 1e-6, "{first} vs {expected}");
    }

    #[test]
    fn sigmoid_and_none() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 3>::from_floats([[[0.0, 2.0]]], &device);
        let s = Activation::Sigmoid.apply(x.clone(), "test").into_data();
        s.assert_approx_eq::<f32>(
            &TensorData::from([[[0.5, 1.0 / (1.0 + (-2f32).exp())]]]),
            Tolerance::default(),
        );
        Activation::None
            .apply(x.clone(), "test")
            .into_data()
            .assert_eq(&x.into_data(), true);
    }

    #[test]
    #[should_panic(expected = "`activation` = Softmax needs `input` with at least 2 channels")]
    fn softmax_on_one_channel_panics() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 3>::zeros([2, 1, 4], &device);
        let _ = Activation::Softmax.apply(x, "DiceLoss");
    }

    /// The gradient of `Σ w·softmax(x)` in f32 against the closed form `p·(w − Σ p·w)` in f64:
    /// burn's own softmax is about 1e-4 off on burn-ndarray (its approximate f32 `recip`).
    #[test]
    fn softmax_gradient_keeps_f32_precision() {
        type A = burn_autodiff::Autodiff<TestBackend>;
        let device = Default::default();
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

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&Activation::Softmax).unwrap();
        let back: Activation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Activation::Softmax);
    }
}
