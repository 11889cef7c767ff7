//! Targets: dense or class indices, checked against the input and flattened to
//! `[batch, channel, pixels]`, with `ignore_index` and spatial masks turned into one pixel mask.
//!
//! The flattened forms are plain data ([`crate::kernels::input`]); what computes the losses'
//! terms from them is chosen in [`crate::kernels`].

use burn::tensor::{backend::Backend, ElementConversion, Int, Tensor};

use crate::checks::{check_input_shape, label_message, Checks, VerdictContext};
use crate::kernels;
pub(crate) use crate::kernels::input::{FlatTarget, PreparedTarget};
use crate::reshape::{reshape, reshape_int};

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

/// The network output and its target, checked and flattened.
#[derive(Debug)]
pub(crate) struct Prepared<B: Backend> {
    /// The raw input, `[batch, class, pixels]`.
    pub input: Tensor<B, 3>,
    /// The target.
    pub target: PreparedTarget<B>,
    /// Data checks left to the statistics kernel, which reads the same data anyway.
    pub deferred: Option<DeferredChecks>,
}

impl<B: Backend> Prepared<B> {
    /// Number of channels of the input.
    pub fn channels(&self) -> usize {
        self.input.dims()[1]
    }
}

/// The data checks of `check_inputs` on the input and the target (finite values, class indices
/// in range), left to the statistics pass of a kernel ([`crate::kernels`]) where one will run:
/// the kernel checks the data it reads anyway and returns a verdict. These checks run with burn
/// ops when the verdict is a failure known on the host (for the exact message), or when no
/// kernel ran after all.
pub(crate) struct DeferredChecks {
    run: Box<dyn FnOnce()>,
    context: VerdictContext,
}

impl DeferredChecks {
    /// Runs the checks: panics with the message of the first failed one.
    pub fn run(self) {
        (self.run)()
    }

    /// What a kernel's device verdict is checked against.
    pub fn describe(&self) -> VerdictContext {
        self.context
    }
}

impl std::fmt::Debug for DeferredChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeferredChecks")
    }
}

/// `[batch, channel, pixels]` of a `[batch, channel, *spatial]` shape.
pub(crate) fn flat_dims<const D: usize>(dims: &[usize; D]) -> [usize; 3] {
    [dims[0], dims[1], dims[2..].iter().product()]
}

/// Checks `input` and `target` (shapes always, data when `check_inputs`) and flattens both.
///
/// With `defer`, on a backend where a kernel computes the statistics
/// ([`crate::kernels::checks_in_pass`]), the finite and class-index checks are left to that
/// pass ([`Prepared::deferred`]): only for a caller that goes straight to
/// [`crate::stats::ClassStats::of_prepared`].
///
/// # Panics
/// On a wrong rank or shape, `ignore_index` with a dense target, and, with `check_inputs`,
/// non-finite data or class indices out of range.
pub(crate) fn prepare<B: Backend, const D: usize>(
    loss: &'static str,
    input: Tensor<B, D>,
    target: DiceTarget<B, D>,
    ignore_index: Option<usize>,
    check_inputs: bool,
    defer: bool,
) -> Prepared<B> {
    prepare_with(
        loss,
        input,
        target,
        ignore_index,
        check_inputs,
        defer,
        |_| (),
    )
}

/// [`prepare`], with `extra` running before the data checks are read back, so that it can
/// add its own checks (it gets `None` when `check_inputs` is off).
pub(crate) fn prepare_with<B: Backend, const D: usize>(
    loss: &'static str,
    input: Tensor<B, D>,
    target: DiceTarget<B, D>,
    ignore_index: Option<usize>,
    check_inputs: bool,
    defer: bool,
    extra: impl FnOnce(Option<&mut Checks<B>>),
) -> Prepared<B> {
    let dims = input.dims();
    check_input_shape(loss, &dims);
    let defer =
        check_inputs && defer && kernels::checks_in_pass::<B>(&input.device(), input.dtype());
    let mut checks = check_inputs.then(|| Checks::new(loss));
    if let Some(checks) = checks.as_mut().filter(|_| !defer) {
        checks.finite("input", input.clone());
    }
    extra(checks.as_mut());
    let deferred = defer.then(|| {
        let context = VerdictContext {
            channels: dims[1],
            labels: matches!(target, DiceTarget::Indices(_)) && dims[1] > 1,
            n_labels: dims[1].max(2),
            ignore_index,
        };
        let (input, target) = (input.clone(), target.clone());
        DeferredChecks {
            run: Box::new(move || {
                let mut checks = Checks::new(loss);
                checks.finite("input", input);
                prepare_target(loss, &dims, target, ignore_index, Some(&mut checks), false);
                checks.finish();
            }),
            context,
        }
    });
    let target = prepare_target(loss, &dims, target, ignore_index, checks.as_mut(), defer);
    if let Some(checks) = checks {
        checks.finish();
    }
    Prepared {
        input: reshape(input, flat_dims(&dims)),
        target,
        deferred,
    }
}

/// Validates `target` against an input of shape `input_dims` and flattens it.
///
/// `ignore_index` is only allowed with class-index targets. Data checks (finite values, class
/// indices in range) go into `checks`, except those a kernel makes (`deferred`: a finite
/// dense target, class indices of an input of two or more channels).
///
/// # Panics
/// On a shape mismatch, or `ignore_index` with a dense target.
pub(crate) fn prepare_target<B: Backend, const D: usize>(
    loss: &'static str,
    input_dims: &[usize; D],
    target: DiceTarget<B, D>,
    ignore_index: Option<usize>,
    checks: Option<&mut Checks<B>>,
    deferred: bool,
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
            if let Some(checks) = checks.filter(|_| !deferred) {
                checks.probabilities("target", t.clone());
            }
            PreparedTarget {
                target: FlatTarget::Dense(reshape(t, [b, c, s])),
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
            // A single-channel input's labels reach the kernels as a dense target, whose
            // check (values in [0, 1]) is this one; but a device verdict cannot name the
            // offending label, so there they are checked here.
            let in_pass = deferred && (c > 1 || kernels::checks_on_host::<B>(&y.device()));
            if let Some(checks) = checks.filter(|_| !in_pass) {
                let mut bad = y
                    .clone()
                    .lower_elem(0)
                    .bool_or(y.clone().greater_equal_elem(n_labels as i64));
                if let Some(ii) = ignore_index {
                    bad = bad.bool_and(y.clone().not_equal_elem(ii as i64));
                }
                let offending = y.clone().mask_fill(bad.clone().bool_not(), 0);
                let context = VerdictContext {
                    channels: c,
                    labels: true,
                    n_labels,
                    ignore_index,
                };
                let detail = move || {
                    let max: i64 = offending.clone().max().into_scalar().elem();
                    let min: i64 = offending.min().into_scalar().elem();
                    let value = if max != 0 { max } else { min };
                    label_message(loss, value, context)
                };
                checks.add(bad, detail);
            }
            let y = reshape_int(y, [b, 1, s]);
            let (y, valid) = match ignore_index {
                Some(ii) => {
                    let ignored = y.clone().equal_elem(ii as i64);
                    let valid = ignored.clone().bool_not().float();
                    (y.mask_fill(ignored, 0), Some(valid))
                }
                None => (y, None),
            };
            let target = if c == 1 {
                FlatTarget::Dense(y.float())
            } else {
                FlatTarget::Indices(y)
            };
            PreparedTarget { target, valid }
        }
    }
}

/// Checks a spatial mask against an input of shape `input_dims` and flattens it to
/// `[batch, 1, pixels]`. The mask may have batch size 1 and size-1 spatial dims (broadcast).
///
/// # Panics
/// On a mask shape that neither matches nor broadcasts to `[batch, 1, *spatial]`.
pub(crate) fn prepare_mask<B: Backend, const D: usize>(
    loss: &'static str,
    input_dims: &[usize; D],
    mask: Tensor<B, D>,
    checks: Option<&mut Checks<B>>,
) -> Tensor<B, 3> {
    let m_dims = mask.dims();
    let mut expected = *input_dims;
    expected[1] = 1;
    let fits = m_dims[1] == 1
        && m_dims
            .iter()
            .zip(&expected)
            .all(|(&m, &e)| m == e || m == 1);
    assert!(
        fits,
        "{loss}: `mask` must have shape [batch, 1, *spatial] = {expected:?} (size-1 dims \
         broadcast), got {m_dims:?}"
    );
    if let Some(checks) = checks {
        let bad = mask
            .clone()
            .not_equal_elem(0.0)
            .bool_and(mask.clone().not_equal_elem(1.0));
        checks.add(bad, move || {
            format!("{loss}: `mask` must hold only 0 and 1 (pixels left out / kept)")
        });
    }
    let [b, _, s] = flat_dims(input_dims);
    mask.expand(expected).reshape([b, 1, s])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::check_input_shape;
    use crate::tests::{device, TestBackend};

    type B = TestBackend;

    fn labels(data: [[[i64; 4]; 1]; 1]) -> Tensor<B, 3, Int> {
        Tensor::from_ints(data, &device())
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
            false,
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
            false,
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
            false,
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
            false,
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
            false,
        );
        checks.finish();
    }

    #[test]
    #[should_panic(
        expected = "dense `target` must have the input's shape [1, 2, 4], got [1, 2, 3]"
    )]
    fn dense_shape_mismatch() {
        let t = Tensor::<B, 3>::zeros([1, 2, 3], &device());
        prepare_target("test", &[1, 2, 4], t.into(), None, None, false);
    }

    #[test]
    #[should_panic(
        expected = "must have shape [batch, 1, *spatial] = [1, 1, 4] for an input of shape [1, 3, 4], got [1, 3, 4]"
    )]
    fn index_shape_mismatch() {
        let t = Tensor::<B, 3, Int>::zeros([1, 3, 4], &device());
        prepare_target("test", &[1, 3, 4], t.into(), None, None, false);
    }

    #[test]
    #[should_panic(expected = "dense `target` holds NaN, infinite values or values outside [0, 1]")]
    fn target_outside_the_unit_interval() {
        let t = Tensor::<B, 3>::from_floats([[[0.0, 5.0]]], &device());
        let mut checks = Checks::new("test");
        prepare_target("test", &[1, 1, 2], t.into(), None, Some(&mut checks), false);
        checks.finish();
    }

    #[test]
    #[should_panic(expected = "dense `target` holds NaN, infinite values or values outside [0, 1]")]
    fn nan_in_dense_target() {
        let t = Tensor::<B, 3>::from_floats([[[0.0, f32::NAN]]], &device());
        let mut checks = Checks::new("test");
        prepare_target("test", &[1, 1, 2], t.into(), None, Some(&mut checks), false);
        checks.finish();
    }

    #[test]
    #[should_panic(expected = "needs a class-index target")]
    fn ignore_index_with_dense_target() {
        let t = Tensor::<B, 3>::zeros([1, 2, 4], &device());
        prepare_target("test", &[1, 2, 4], t.into(), Some(255), None, false);
    }

    #[test]
    #[should_panic(expected = "got rank 2 with shape [4, 3]")]
    fn rank_too_small() {
        check_input_shape("test", &[4, 3]);
    }
}
