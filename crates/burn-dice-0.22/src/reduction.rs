//! Reduction of the per-(sample, class) losses to one number.

use burn::config::Config;
use burn::tensor::Tensor;

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
    pub fn reduce(self, loss: Tensor<2>) -> Tensor<1> {
        match self {
            DiceReduction::Mean => loss.mean(),
            DiceReduction::Sum => loss.sum(),
        }
    }
}

/// Multiplies each kept class's loss (`[batch, class']`) by its weight, MONAI's rule: the
/// weights must match the kept classes, and a single kept class is left unweighted.
///
/// # Panics
/// If the number of weights is not the number of kept classes.
pub(crate) fn apply_class_weight(
    loss: Tensor<2>,
    weight: Option<&Tensor<1>>,
    channels: usize,
    include_background: bool,
    name: &str,
) -> Tensor<2> {
    let Some(weight) = weight else {
        return loss;
    };
    let kept = loss.dims()[1];
    let given = weight.dims()[0];
    assert!(
        given == kept,
        "{name}: `weight` has {given} entries but {kept} class(es) are kept (input has \
         {channels} channel(s), include_background = {include_background}): give one weight \
         per kept class"
    );
    if kept == 1 {
        // MONAI applies no class weight to a single kept class.
        return loss;
    }
    let weight = crate::numerics::in_dtype(weight.clone(), loss.dtype());
    loss * weight.unsqueeze_dim(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::device;

    #[test]
    fn mean_and_sum() {
        let device = device();
        let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 6.0]], &device);
        assert_eq!(
            DiceReduction::Mean.reduce(x.clone()).into_scalar::<f32>(),
            3.0
        );
        assert_eq!(DiceReduction::Sum.reduce(x).into_scalar::<f32>(), 12.0);
    }
}
