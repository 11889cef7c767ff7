//! Reduction of the per-(sample, class) losses to one number.

use burn::config::Config;
use burn::tensor::{backend::Backend, Tensor};

/// How the unreduced `[batch, class]` loss is turned into the scalar returned by `forward`.
///
/// Both are MONAI's: a plain mean or sum over every (sample, class) entry, after the class
/// weights were multiplied in (the mean is **not** divided by the sum of the weights).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DiceReduction {
    /// Mean over all (sample, kept class) entries.
    Mean,
    /// Sum over all (sample, kept class) entries.
    Sum,
}

impl DiceReduction {
    /// Reduces a `[batch, class]` loss to a tensor of shape `[1]`.
    pub fn reduce<B: Backend>(self, loss: Tensor<B, 2>) -> Tensor<B, 1> {
        match self {
            DiceReduction::Mean => loss.mean(),
            DiceReduction::Sum => loss.sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TestBackend;

    #[test]
    fn mean_and_sum() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 2>::from_floats([[1.0, 2.0], [3.0, 6.0]], &device);
        assert_eq!(DiceReduction::Mean.reduce(x.clone()).into_scalar(), 3.0);
        assert_eq!(DiceReduction::Sum.reduce(x).into_scalar(), 12.0);
    }
}
