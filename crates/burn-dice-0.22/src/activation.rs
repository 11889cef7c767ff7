//! The activation applied to the network's raw output before any statistic is taken.

use burn::config::Config;
use burn::tensor::Tensor;

use crate::numerics::{sigmoid, softmax};

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
    pub fn apply<const D: usize>(self, input: Tensor<D>, loss: &str) -> Tensor<D> {
        match self {
            Activation::None => input,
            Activation::Sigmoid => sigmoid(input),
            Activation::Softmax => {
                self.check(input.dims()[1], loss);
                softmax(input, 1)
            }
        }
    }

    /// Panics if this activation cannot be applied to an input of `channels` channels (softmax
    /// over one channel); `loss` names the caller.
    pub(crate) fn check(self, channels: usize, loss: &str) {
        assert!(
            self != Activation::Softmax || channels > 1,
            "{loss}: `activation` = Softmax needs `input` with at least 2 channels \
             (dim 1), got {channels}: softmax over one channel is the constant 1. \
             Use Activation::Sigmoid for a single-channel (binary) output."
        );
    }
}

/// The kernels' activation (the burn-free core's, shared by both release lines).
impl From<Activation> for burn_dice_core::Activation {
    fn from(a: Activation) -> Self {
        match a {
            Activation::None => burn_dice_core::Activation::None,
            Activation::Sigmoid => burn_dice_core::Activation::Sigmoid,
            Activation::Softmax => burn_dice_core::Activation::Softmax,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::device;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn softmax_is_over_the_class_dim() {
        let device = device();
        let x = Tensor::<3>::from_floats(
            [[[0.0, 1.0], [0.0, 3.0]], [[2.0, -1.0], [2.0, 0.0]]],
            &device,
        );
        let p = Activation::Softmax.apply(x, "test");
        let sums = p.clone().sum_dim(1);
        sums.into_data().assert_approx_eq::<f32>(
            &TensorData::from([[[1.0, 1.0]], [[1.0, 1.0]]]),
            Tolerance::default(),
        );
        let first = p.slice([0..1, 0..1, 1..2]).into_scalar::<f32>();
        let expected = 1.0 / (1.0 + 2f32.exp());
        assert!((first - expected).abs() < 1e-6, "{first} vs {expected}");
    }

    #[test]
    fn sigmoid_and_none() {
        let device = device();
        let x = Tensor::<3>::from_floats([[[0.0, 2.0]]], &device);
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
        let device = device();
        let x = Tensor::<3>::zeros([2, 1, 4], &device);
        let _ = Activation::Softmax.apply(x, "DiceLoss");
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&Activation::Softmax).unwrap();
        let back: Activation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Activation::Softmax);
    }
}
