#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod checks;
pub mod dice;
pub mod dice_ce;
pub mod dice_focal;
#[cfg(any(feature = "ndarray", feature = "flex", feature = "cube-kernels"))]
mod downcast;
pub mod generalized_dice;
pub mod kernels;
pub mod metric;
mod numerics;
pub mod processes;
pub mod reduction;
pub mod replicas;
mod reshape;
mod stats;
mod target;
pub mod tversky;

pub use activation::Activation;
pub use checks::{wait_for_checks, ConfigError};
pub use dice::{DiceLoss, DiceLossConfig};
pub use dice_ce::{DiceCELoss, DiceCELossConfig};
pub use dice_focal::{DiceFocalLoss, DiceFocalLossConfig};
pub use generalized_dice::{GeneralizedDiceLoss, GeneralizedDiceLossConfig, WeightType};
pub use kernels::KernelPath;
pub use reduction::DiceReduction;
pub use replicas::{GradientCombine, ProcessSum, ReplicaGroup};
pub use target::DiceTarget;
pub use tversky::{TverskyLoss, TverskyLossConfig};

#[cfg(test)]
pub(crate) mod tests {
    use burn_ndarray::NdArrayDevice;

    /// The backend of the unit tests.
    pub type TestBackend = burn_ndarray::NdArray<f32>;

    /// The device of the unit tests (the 0.22 line, generated from this code, has a function of
    /// the same name and shape).
    pub fn device() -> NdArrayDevice {
        Default::default()
    }

    /// The device of the unit tests that differentiate: here the same as [`device`] (burn 0.21
    /// puts autodiff in the backend type, `Autodiff<TestBackend>`; burn 0.22 in the device).
    pub fn autodiff() -> NdArrayDevice {
        Default::default()
    }
}
