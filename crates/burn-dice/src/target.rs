//! Targets: dense or class indices, checked against the input and flattened to
//! `[batch, channel, pixels]`, with `ignore_index` turned into a pixel mask.
//!
//! Class-index targets are never expanded into a float one-hot tensor of the input's size: the
//! loss statistics gather and scatter by label instead (see [`crate::stats`]).

use burn::tensor::{backend::Backend, Bool, ElementConversion, Int, Tensor};

/// The ground truth handed to a loss's `forward`, of the same rank `D` as its input.
///
/// Both kinds convert with `.into()`, so `forward(input, target)` accepts a `Tensor<B, D>` or a
/// `Tensor<B, D, Int>` directly.
#[derive(Debug, Clone)]
pub enum DiceTarget<B: Backend, const D: usize> {
    /// Probabilities or one-hot masks with exactly the input's shape `[batch, class, *spatial]`
    /// (MONAI's default, `to_onehot_y=False`). Soft labels in `[0, 1]` are allowed.
    Dense(Tensor<B, D>),
    /// Class indices of shape `[batch, 1, *spatial]` (MONAI's `to_onehot_y=True`): each value in
    /// `0..class`, or the configured `ignore_index`. For a single-channel input the values are
    /// the binary mask, 0 or 1.
    Indices(Tensor<B, D, Int>),
}

impl<B: Backend, const D: usize> From<Tensor<B, D>> for DiceTarget<B, D> {
    fn from(target: Tensor<B, D>) -> Self {
        DiceTarget::Dense(target)
    }
}

impl<B: Backend, const D: usize> From<Tensor<B, D, Int>> for DiceTarget<B, D> {
    fn from(target: Tensor<B, D, Int>) -> Self {
        DiceTarget::Indices(target)
    }
}

/// A target checked against the input and flattened to rank 3.
#[derive(Debug, Clone)]
pub(crate) enum FlatTarget<B: Backend> {
    /// `[batch, class, pixels]`, ignored pixels already zeroed.
    Dense(Tensor<B, 3>),
    /// Class indices `[batch, 1, pixels]` for an input of two or more channels; ignored pixels
    /// carry class 0 and are removed through the `valid` mask.
    Indices(Tensor<B, 3, Int>),
}

/// The target as the statistics need it.
#[derive(Debug, Clone)]
pub(crate) struct PreparedTarget<B: Backend> {
    pub target: FlatTarget<B>,
    /// `[batch, 1, pixels]`, 1 where the pixel counts and 0 where its label is `ignore_index`.
    pub valid: Option<Tensor<B, 3>>,
}

/// Checks an input shape: rank of at least 3, no empty dimension.
///
/// # Panics
/// With a message naming `loss` and the shape.
pub(crate) fn check_input_shape<const D: usize>(loss: &str, dims: &[usize; D]) {
    assert!(
        D >= 3,
        "{loss}: `input` must have shape [batch, class, *spatial] with 1 to 3 spatial dims \
         (rank 3, 4 or 5), got rank {D} with shape {dims:?}"
    );
    assert!(
        dims.iter().all(|&d| d > 0),
        "{loss}: `input` has an empty dimension: shape {dims:?}"
    );
}

/// `[batch, channel, pixels]` of a `[batch, channel, *spatial]` shape.
pub(crate) fn flat_dims<const D: usize>(dims: &[usize; D]) -> [usize; 3] {
    [dims[0], dims[1], dims[2..].iter().product()]
}

/// Data checks that need to read the device: collected, then read back in one transfer.
///
/// Each check is a boolean "something is wrong" flag and the message to panic with.
pub(crate) struct Checks<B: Backend> {
    loss: &'static str,
    flags: Vec<Tensor<B, 1, Int>>,
    messages: Vec<Box<dyn FnOnce() -> String>>,
}

impl<B: Backend> Checks<B> {
    pub fn new(loss: &'static str) -> Self {
        Self {
            loss,
            flags: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Panics later (in [`Checks::finish`]) with `message` if `bad` holds a `true`.
    pub fn add<const D: usize>(
        &mut self,
        bad: Tensor<B, D, Bool>,
        message: impl FnOnce() -> String + 'static,
    ) {
        self.flags.push(bad.any().int());
        self.messages.push(Box::new(message));
    }

    /// Fails if `tensor` holds a NaN or an infinity.
    pub fn finite<const D: usize>(&mut self, name: &'static str, tensor: Tensor<B, D>) {
        let loss = self.loss;
        self.add(tensor.is_finite().bool_not(), move || {
            format!("{loss}: `{name}` holds NaN or infinite values; expected finite numbers")
        });
    }

    /// Reads every flag in one transfer and panics with the first failed check's message.
    pub fn finish(self) {
        if self.flags.is_empty() {
            return;
        }
        let flags = Tensor::cat(self.flags, 0).into_data();
        let flags = flags
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("flags are integers");
        if let Some(first) = flags.iter().position(|&f| f != 0) {
            let message = self
                .messages
                .into_iter()
                .nth(first)
                .expect("one message per flag");
            panic!("{}", message());
        }
    }
}

/// Validates `target` against an input of shape `input_dims` and flattens it.
///
/// `ignore_index` is only allowed with class-index targets. Data checks (finite values, class
/// indices in range) go into `checks`.
///
/// # Panics
/// On a shape mismatch, or `ignore_index` with a dense target.
pub(crate) fn prepare_target<B: Backend, const D: usize>(
    loss: &'static str,
    input_dims: &[usize; D],
    target: DiceTarget<B, D>,
    ignore_index: Option<usize>,
    checks: Option<&mut Checks<B>>,
) -> PreparedTarget<B> {
    let [b, c, s] = flat_dims(input_dims);
    match target {
        DiceTarget::Dense(t) => {
            let t_dims = t.dims();
            assert!(
                t_dims == *input_dims,
                "{loss}: dense `target` must have the input's shape {input_dims:?}, got \
                 {t_dims:?} (for class indices pass a Tensor<B, {D}, Int> of shape \
                 [batch, 1, *spatial])"
            );
            assert!(
                ignore_index.is_none(),
                "{loss}: `ignore_index` = {ignore_index:?} needs a class-index target \
                 (Tensor<B, {D}, Int> of shape [batch, 1, *spatial]), got a dense target"
            );
            if let Some(checks) = checks {
                checks.finite("target", t.clone());
            }
            PreparedTarget {
                target: FlatTarget::Dense(t.reshape([b, c, s])),
                valid: None,
            }
        }
        DiceTarget::Indices(y) => {
            let t_dims = y.dims();
            let mut expected = *input_dims;
            expected[1] = 1;
            assert!(
                t_dims == expected,
                "{loss}: class-index `target` must have shape [batch, 1, *spatial] = \
                 {expected:?} for an input of shape {input_dims:?}, got {t_dims:?}"
            );
            // A single channel is the binary case: labels 0/1 are the mask itself.
            let n_labels = c.max(2);
            if let Some(checks) = checks {
                let mut bad = y
                    .clone()
                    .lower_elem(0)
                    .bool_or(y.clone().greater_equal_elem(n_labels as i64));
                if let Some(ii) = ignore_index {
                    bad = bad.bool_and(y.clone().not_equal_elem(ii as i64));
                }
                let offending = y.clone().mask_fill(bad.clone().bool_not(), 0);
                let detail = move || {
                    let max: i64 = offending.clone().max().into_scalar().elem();
                    let min: i64 = offending.min().into_scalar().elem();
                    let value = if max != 0 { max } else { min };
                    format!(
                        "{loss}: `target` holds class index {value}, expected 0..{n_labels} \
                         (input has {c} channel(s)){}",
                        match ignore_index {
                            Some(ii) => format!(" or the ignore_index {ii}"),
                            None => String::new(),
                        }
                    )
                };
                checks.add(bad, detail);
            }
            let y = y.reshape([b, 1, s]);
            let (y, valid) = match ignore_index {
                Some(ii) => {
                    let ignored = y.clone().equal_elem(ii as i64);
                    let valid = ignored.clone().bool_not().float();
                    (y.mask_fill(ignored, 0), Some(valid))
                }
                None => (y, None),
            };
            let target = if c == 1 {
                let t = y.float();
                FlatTarget::Dense(match &valid {
                    Some(v) => t * v.clone(),
                    None => t,
                })
            } else {
                FlatTarget::Indices(y)
            };
            PreparedTarget { target, valid }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TestBackend;

    type B = TestBackend;

    fn labels(data: [[[i64; 4]; 1]; 1]) -> Tensor<B, 3, Int> {
        Tensor::from_ints(data, &Default::default())
    }

    #[test]
    fn indices_keep_their_shape_and_ignored_pixels_become_a_mask() {
        let mut checks = Checks::new("test");
        let p = prepare_target(
            "test",
            &[1, 3, 4],
            labels([[[0, 2, 9, 1]]]).into(),
            Some(9),
            Some(&mut checks),
        );
        checks.finish();
        match p.target {
            FlatTarget::Indices(y) => assert_eq!(
                y.into_data().convert::<i64>().into_vec::<i64>().unwrap(),
                vec![0, 2, 0, 1]
            ),
            FlatTarget::Dense(_) => panic!("expected indices"),
        }
        assert_eq!(
            p.valid.unwrap().into_data().into_vec::<f32>().unwrap(),
            vec![1.0, 1.0, 0.0, 1.0]
        );
    }

    #[test]
    fn single_channel_indices_are_the_binary_mask() {
        let p = prepare_target::<B, 3>(
            "test",
            &[1, 1, 4],
            labels([[[0, 1, 1, 0]]]).into(),
            None,
            None,
        );
        match p.target {
            FlatTarget::Dense(t) => assert_eq!(
                t.into_data().into_vec::<f32>().unwrap(),
                vec![0.0, 1.0, 1.0, 0.0]
            ),
            FlatTarget::Indices(_) => panic!("expected a dense binary mask"),
        }
    }

    #[test]
    #[should_panic(
        expected = "`target` holds class index 3, expected 0..3 (input has 3 channel(s))"
    )]
    fn class_index_out_of_range() {
        let mut checks = Checks::new("test");
        prepare_target(
            "test",
            &[1, 3, 4],
            labels([[[0, 3, 1, 2]]]).into(),
            None,
            Some(&mut checks),
        );
        checks.finish();
    }

    #[test]
    #[should_panic(expected = "`target` holds class index -1")]
    fn negative_class_index() {
        let mut checks = Checks::new("test");
        prepare_target(
            "test",
            &[1, 3, 4],
            labels([[[0, -1, 1, 2]]]).into(),
            None,
            Some(&mut checks),
        );
        checks.finish();
    }

    #[test]
    #[should_panic(
        expected = "`target` holds class index 2, expected 0..2 (input has 1 channel(s))"
    )]
    fn binary_labels_must_be_zero_or_one() {
        let mut checks = Checks::new("test");
        prepare_target(
            "test",
            &[1, 1, 4],
            labels([[[0, 2, 1, 1]]]).into(),
            None,
            Some(&mut checks),
        );
        checks.finish();
    }

    #[test]
    #[should_panic(
        expected = "dense `target` must have the input's shape [1, 2, 4], got [1, 2, 3]"
    )]
    fn dense_shape_mismatch() {
        let t = Tensor::<B, 3>::zeros([1, 2, 3], &Default::default());
        prepare_target("test", &[1, 2, 4], t.into(), None, None);
    }

    #[test]
    #[should_panic(
        expected = "must have shape [batch, 1, *spatial] = [1, 1, 4] for an input of shape [1, 3, 4], got [1, 3, 4]"
    )]
    fn index_shape_mismatch() {
        let t = Tensor::<B, 3, Int>::zeros([1, 3, 4], &Default::default());
        prepare_target("test", &[1, 3, 4], t.into(), None, None);
    }

    #[test]
    #[should_panic(expected = "`target` holds NaN or infinite values")]
    fn nan_in_dense_target() {
        let t = Tensor::<B, 3>::from_floats([[[0.0, f32::NAN]]], &Default::default());
        let mut checks = Checks::new("test");
        prepare_target("test", &[1, 1, 2], t.into(), None, Some(&mut checks));
        checks.finish();
    }

    #[test]
    #[should_panic(expected = "needs a class-index target")]
    fn ignore_index_with_dense_target() {
        let t = Tensor::<B, 3>::zeros([1, 2, 4], &Default::default());
        prepare_target("test", &[1, 2, 4], t.into(), Some(255), None);
    }

    #[test]
    #[should_panic(expected = "got rank 2 with shape [4, 3]")]
    fn rank_too_small() {
        check_input_shape("test", &[4, 3]);
    }
}
