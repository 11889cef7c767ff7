#![doc = include_str!("../../../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod dice;
pub mod reduction;
mod stats;
mod target;

pub use activation::Activation;
pub use dice::{DiceLoss, DiceLossConfig};
pub use reduction::DiceReduction;
pub use target::DiceTarget;

#[cfg(test)]
pub(crate) mod tests {
    /// The backend of the unit tests.
    pub type TestBackend = burn_ndarray::NdArray<f32>;
}
