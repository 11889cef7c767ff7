//! The fused CPU kernels on burn-flex, as a burn 0.22 backend extension.
//!
//! The kernels themselves work on slices and live in the burn-free core that both release
//! lines share ([`burn_dice_core::cpu`]: the statistics with the cross-entropy or focal term in
//! the same pass, forward and backward). This module is the 0.22 glue:
//! - [`DiceKernelBackend`], a `#[backend_extension]` trait routed to `Flex` and to
//!   `Autodiff<Flex>`: `dice_stats` (the `[3 + rows, batch, class]` sums of one pass, with the
//!   verdict of the data checks) and `dice_stats_backward` (the input's gradient from the sums'
//!   gradient, in one more pass);
//! - its `Flex` implementation, which reads the tensors as slices;
//! - its `Autodiff<B, C>` implementation, which registers the backward pass (the macro
//!   generates none);
//! - [`class_stats`], which the losses reach through `kernels::class_stats` once the device and
//!   the element types have been checked (an extension call on a backend it does not list
//!   panics; see `kernels/mod.rs` for what runs where).

use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Element, Tensor, TensorData};
use burn_dice_core::cpu::{self as slices, Labels, Spec, Target, TermSpec};

use super::ext::{KernelMask, KernelTarget};
use super::input::{Extra, FlatTarget, PreparedTarget, Stats, Terms, Verdict};
use super::unstack;
use crate::activation::Activation;

/// The fused statistics pass, as a backend extension: `Flex` and `Autodiff<Flex>` (feature
/// `flex`). Called only for `f32` inputs, dense targets and masks and `i32`/`i64` class
/// indices (checked first by `kernels::path` and [`class_stats`]).
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff: cfg(feature = "flex"))]
pub trait DiceKernelBackend: Backend {
    /// One pass over `x` (`[batch, class, pixels]`, raw): the activation and the
    /// `[3 + rows, batch, class]` sums of `spec` (intersection, prediction, target, then the
    /// term's rows), whether every value passed the data checks, and, with `store`, the
    /// probabilities (for a backward pass that then needs no activation).
    fn dice_stats(
        x: FloatTensor<Self>,
        #[extension_type] target: KernelTarget<Self>,
        #[extension_type] valid: KernelMask<Self>,
        spec: Spec,
        store: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, bool);
}

/// The backward pass of [`DiceKernelBackend::dice_stats`], on the backend inside an autodiff
/// node (not an extension: only the autodiff node calls it).
pub trait StatsBackward: Backend {
    /// The gradient with respect to `x` (`[batch, class, pixels]`) of the sums' gradient
    /// `grad` (`[3 + rows, batch, class]`), from the input `x` or the stored `probs` (`probs`
    /// becomes the gradient's buffer; `x` is needed without it and by a term).
    fn dice_stats_backward(
        x: Option<FloatTensor<Self>>,
        probs: Option<FloatTensor<Self>>,
        target: KernelTarget<Self>,
        valid: Option<FloatTensor<Self>>,
        spec: Spec,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

#[cfg(test)]
thread_local! {
    /// Forward and backward passes of the kernel on this thread (for the tests that hold the
    /// losses to the kernel path).
    static PASSES: std::cell::Cell<[usize; 2]> = const { std::cell::Cell::new([0, 0]) };
}

/// Counts a forward (`0`) or backward (`1`) pass.
fn count(_pass: usize) {
    #[cfg(test)]
    PASSES.with(|p| {
        let mut n = p.get();
        n[_pass] += 1;
        p.set(n);
    });
}

/// Class indices read from a Flex tensor.
enum LabelData<'a> {
    I64(Cow<'a, [i64]>),
    I32(Cow<'a, [i32]>),
}

impl LabelData<'_> {
    fn as_labels(&self) -> Labels<'_> {
        match self {
            LabelData::I64(v) => Labels::I64(v),
            LabelData::I32(v) => Labels::I32(v),
        }
    }
}

/// The data of a Flex tensor in its logical order, borrowed where it is contiguous.
fn flex_slice<E: Element + bytemuck::Pod>(t: &FlexTensor) -> Cow<'_, [E]> {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => Cow::Borrowed(&t.storage::<E>()[start..end]),
        None => Cow::Owned(t.to_contiguous().storage::<E>().to_vec()),
    }
}

/// An `f32` Flex tensor's data; the callers checked the element type.
fn floats(t: &FlexTensor) -> Cow<'_, [f32]> {
    assert_eq!(t.dtype(), DType::F32, "the kernels read f32 data only");
    flex_slice::<f32>(t)
}

fn labels(t: &FlexTensor) -> LabelData<'_> {
    match t.dtype() {
        DType::I64 => LabelData::I64(flex_slice::<i64>(t)),
        DType::I32 => LabelData::I32(flex_slice::<i32>(t)),
        other => unreachable!("class indices of type {other:?} take the generic path"),
    }
}

fn from_floats(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// Runs `f` on the problem of `x` (empty when `None`) against `target`, read as slices.
fn with_problem<R>(
    x: Option<&FlexTensor>,
    target: &KernelTarget<Flex>,
    valid: Option<&FlexTensor>,
    spec: &Spec,
    f: impl FnOnce(&slices::Problem) -> R,
) -> R {
    let xs = x.map_or(Cow::Borrowed(&[][..]), floats);
    let valid = valid.map(floats);
    let (dense, labels) = match target {
        KernelTarget::Dense(t) => (Some(floats(t)), None),
        KernelTarget::Indices(l) => (None, Some(labels(l))),
    };
    let target = match (&dense, &labels) {
        (Some(t), _) => Target::Dense(t),
        (_, Some(l)) => Target::Indices(l.as_labels()),
        _ => unreachable!("one target kind"),
    };
    f(&spec.problem(&xs, target, valid.as_deref()))
}

impl DiceKernelBackend for Flex {
    fn dice_stats(
        x: FlexTensor,
        target: KernelTarget<Self>,
        valid: KernelMask<Self>,
        spec: Spec,
        store: bool,
    ) -> (FlexTensor, Option<FlexTensor>, bool) {
        count(0);
        let valid = valid.into_option();
        let (sums, probs) = with_problem(Some(&x), &target, valid.as_ref(), &spec, |p| {
            let term = spec.term(p);
            if store {
                let (sums, probs) = slices::forward_storing(p, &term);
                (sums, Some(probs))
            } else {
                (slices::forward(p, &term), None)
            }
        });
        let [b, c, _] = spec.dims;
        let rows = sums.sums.len() / (b * c);
        let out = from_floats(sums.sums, &[rows, b, c]);
        let probs = probs.map(|p| from_floats(p, &spec.dims));
        (out, probs, sums.valid_data)
    }
}

impl StatsBackward for Flex {
    fn dice_stats_backward(
        x: Option<FlexTensor>,
        probs: Option<FlexTensor>,
        target: KernelTarget<Self>,
        valid: Option<FlexTensor>,
        spec: Spec,
        grad: FlexTensor,
    ) -> FlexTensor {
        count(1);
        let grad = floats(&grad);
        match probs {
            Some(mut probs) => {
                // The stored probabilities become the gradient, in place: this node holds
                // their only reference (`storage_mut` would copy a shared buffer first).
                with_problem(x.as_ref(), &target, valid.as_ref(), &spec, |p| {
                    let buffer = probs.storage_mut::<f32>();
                    slices::backward_stored(p, &spec.term(p), &grad, buffer)
                });
                probs
            }
            None => {
                let dx = with_problem(x.as_ref(), &target, valid.as_ref(), &spec, |p| {
                    slices::backward(p, &spec.term(p), &grad)
                });
                from_floats(dx, &spec.dims)
            }
        }
    }
}

/// What the backward pass of `dice_stats` keeps.
#[derive(Debug, Clone)]
struct Saved<B: Backend> {
    x: Option<FloatTensor<B>>,
    probs: Option<FloatTensor<B>>,
    target: KernelTarget<B>,
    valid: Option<FloatTensor<B>>,
    spec: Spec,
}

/// The autodiff node of `dice_stats`: the input's gradient from the sums' gradient.
#[derive(Debug)]
struct StatsNode;

impl<B: StatsBackward> Backward<B, 1> for StatsNode {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let Saved {
                x,
                probs,
                target,
                valid,
                spec,
            } = ops.state;
            let dx = B::dice_stats_backward(x, probs, target, valid, spec, grad);
            grads.register::<B>(parent.id, dx);
        }
    }
}

impl<B: DiceKernelBackend + StatsBackward, C: CheckpointStrategy> DiceKernelBackend
    for Autodiff<B, C>
{
    fn dice_stats(
        x: FloatTensor<Self>,
        target: KernelTarget<Self>,
        valid: KernelMask<Self>,
        spec: Spec,
        _store: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>, bool) {
        // The target and the mask carry no gradient (a tracked one takes the generic path).
        let target = match target {
            KernelTarget::Dense(t) => KernelTarget::Dense(t.into_primitive()),
            KernelTarget::Indices(l) => KernelTarget::Indices(l),
        };
        let valid = match valid {
            KernelMask::All => KernelMask::All,
            KernelMask::Valid(v) => KernelMask::Valid(v.into_primitive()),
        };
        match StatsNode
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                // Store the probabilities for the backward pass, which then needs no
                // activation and no buffer of its own. With no activation `p = x`: the input
                // is kept instead (and for a term, which reads it).
                let store = spec.activation != burn_dice_core::Activation::None;
                let x = x.into_primitive();
                let (sums, probs, valid_data) = B::dice_stats(
                    x.clone(),
                    target.clone(),
                    valid.clone(),
                    spec.clone(),
                    store,
                );
                let keep_x = probs.is_none() || spec.term != TermSpec::None;
                let saved = Saved {
                    x: keep_x.then_some(x),
                    probs,
                    target,
                    valid: valid.into_option(),
                    spec,
                };
                (prep.finish(saved, sums), None, valid_data)
            }
            OpsKind::UnTracked(prep) => {
                let (sums, _, valid_data) =
                    B::dice_stats(x.into_primitive(), target, valid, spec, false);
                (prep.finish(sums), None, valid_data)
            }
        }
    }
}

/// Whether `dtype` is an element type of class indices the kernels read.
fn reads_labels(dtype: DType) -> bool {
    matches!(dtype, DType::I64 | DType::I32)
}

/// The statistics (and the `extra` term's sums) of `input` against `target` from the fused
/// kernel, or `None` where it does not take these tensors: a target or mask that requires a
/// gradient, or one of an element type it does not read. The caller checked that `input` is
/// an `f32` tensor on a Flex device.
pub(super) fn class_stats(
    input: &Tensor<3>,
    target: &PreparedTarget,
    activation: Activation,
    terms: Terms,
    extra: &Extra,
) -> Option<Stats> {
    if target.tracked() {
        return None;
    }
    let f32_only = |t: &Tensor<3>| t.dtype() == DType::F32;
    let kernel_target = match &target.target {
        FlatTarget::Dense(t) if f32_only(t) => KernelTarget::Dense(t.clone().into_dispatch()),
        FlatTarget::Indices(l) if reads_labels(l.dtype()) => {
            KernelTarget::Indices(l.clone().into_dispatch())
        }
        _ => return None,
    };
    let valid = match &target.valid {
        Some(v) if f32_only(v) => KernelMask::Valid(v.clone().into_dispatch()),
        Some(_) => return None,
        None => KernelMask::All,
    };
    let spec = Spec {
        dims: input.dims(),
        activation: activation.into(),
        terms,
        term: term_spec(extra),
    };
    let (sums, _, valid_data) = <Dispatch as DiceKernelBackend>::dice_stats(
        input.clone().into_dispatch(),
        kernel_target,
        valid,
        spec,
        false,
    );
    let (sums, extra) = unstack(Tensor::<3>::from_dispatch(sums), extra);
    Some(Stats {
        sums,
        verdict: Verdict::Host(valid_data),
        extra: Some(extra),
    })
}

/// The owned options of the `extra` term.
fn term_spec(extra: &Extra) -> TermSpec {
    match extra {
        Extra::None => TermSpec::None,
        Extra::Ce(options) => TermSpec::Ce {
            class_weight: options.class_weight.as_ref().map(|w| {
                w.to_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 weights")
            }),
            pos_weight: options.pos_weight,
            label_smoothing: options.label_smoothing as f32,
        },
        Extra::Focal(options) => TermSpec::Focal {
            gamma: options.gamma as f32,
            alpha: options.alpha.map(|a| a as f32),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{compare_on, deferred_checks_on, panic_message, SMALL};
    use crate::kernels::{generic_only, path, KernelPath};
    use crate::DiceLossConfig;
    use burn::tensor::{Device, Tolerance};

    #[test]
    fn fused_equals_generic_on_flex_with_autodiff() {
        compare_on(&Device::flex().autodiff(), SMALL);
    }

    #[test]
    fn fused_equals_generic_with_gradient_checkpointing() {
        compare_on(&Device::flex().autodiff().gradient_checkpointing(), SMALL);
    }

    #[test]
    fn deferred_checks_fail_with_the_same_messages() {
        deferred_checks_on(&Device::flex());
        deferred_checks_on(&Device::flex().autodiff());
    }

    #[test]
    fn deferred_checks_run_when_the_fused_pass_does_not() {
        // A dense target that requires a gradient takes the generic path on a device where
        // the checks were left to the fused pass: they must still run.
        let device = Device::flex().autodiff();
        let x =
            Tensor::<4>::ones([1, 2, 2, 2], &device).slice_fill([0..1, 0..1, 0..1, 0..1], f32::NAN);
        let t = Tensor::<4>::ones([1, 2, 2, 2], &device).require_grad();
        let loss = DiceLossConfig::new().init(&device);
        let message = panic_message(|| drop(loss.forward(x, t)));
        assert_eq!(
            message.as_deref(),
            Some("DiceLoss: `input` holds NaN or infinite values; expected finite numbers")
        );
    }

    /// Whether the fused kernel took `[1, 2, 3]` on `device` in `dtype`, and checks its sums.
    fn fused_on(device: &Device, dtype: DType) -> bool {
        let x = Tensor::<3>::ones([1, 2, 3], (device, dtype));
        let target = PreparedTarget {
            target: FlatTarget::Indices(Tensor::zeros([1, 1, 3], device)),
            valid: None,
        };
        let on_path = path(device, dtype) == KernelPath::Cpu;
        let fused = on_path
            .then(|| {
                class_stats(
                    &x,
                    &target,
                    Activation::Softmax,
                    Terms::Linear,
                    &Extra::None,
                )
            })
            .flatten();
        if let Some(Stats {
            sums: [i, p, t],
            verdict,
            ..
        }) = &fused
        {
            assert!(matches!(verdict, Verdict::Host(true)));
            // Softmax of equal logits: p = 1/2 everywhere; three pixels of class 0.
            let expect = |t: &Tensor<2>, v: [f32; 2]| {
                t.to_data()
                    .assert_approx_eq::<f32>(&TensorData::from([v]), Tolerance::absolute(1e-6))
            };
            expect(i, [1.5, 0.0]);
            expect(p, [1.5, 1.5]);
            expect(t, [3.0, 0.0]);
        }
        assert_eq!(on_path, fused.is_some());
        fused.is_some()
    }

    #[test]
    fn the_fused_path_is_taken_exactly_on_flex_in_f32() {
        assert!(fused_on(&Device::flex(), DType::F32));
        assert!(fused_on(&Device::flex().autodiff(), DType::F32));
        assert!(fused_on(
            &Device::flex().autodiff().gradient_checkpointing(),
            DType::F32
        ));
        assert!(!fused_on(&Device::flex(), DType::F64));
        assert!(!fused_on(&Device::flex().autodiff(), DType::F16));
        assert!(!generic_only(|| fused_on(&Device::flex(), DType::F32)));
    }

    #[test]
    fn every_loss_runs_one_kernel_pass_forward_and_one_backward() {
        use crate::{
            DiceCELossConfig, DiceFocalLossConfig, GeneralizedDiceLossConfig, TverskyLossConfig,
        };
        use burn::tensor::{Distribution, Int};
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let labels =
            Tensor::<4, Int>::random([2, 1, 4, 4], Distribution::Uniform(0.0, 3.0), &device);
        let dice = DiceLossConfig::new().with_activation(crate::Activation::Softmax);
        type Run<'a> = (&'a str, Box<dyn Fn(Tensor<4>) -> Tensor<1> + 'a>);
        let runs: Vec<Run> = vec![
            (
                "dice",
                Box::new(|x| dice.init(&device).forward(x, labels.clone())),
            ),
            (
                "generalized",
                Box::new(|x| {
                    GeneralizedDiceLossConfig::new()
                        .init(&device)
                        .forward(x, labels.clone())
                }),
            ),
            (
                "tversky",
                Box::new(|x| {
                    TverskyLossConfig::new()
                        .init(&device)
                        .forward(x, labels.clone())
                }),
            ),
            (
                "dice-ce",
                Box::new(|x| {
                    DiceCELossConfig::new()
                        .with_dice(dice.clone())
                        .init(&device)
                        .forward(x, labels.clone())
                }),
            ),
            (
                "dice-focal",
                Box::new(|x| {
                    DiceFocalLossConfig::new()
                        .with_dice(dice.clone())
                        .init(&device)
                        .forward(x, labels.clone())
                }),
            ),
        ];
        for (name, run) in &runs {
            let before = PASSES.with(|p| p.get());
            let x = x.clone().require_grad();
            let grads = run(x.clone()).backward();
            assert!(x.grad(&grads).is_some());
            let after = PASSES.with(|p| p.get());
            assert_eq!(
                [after[0] - before[0], after[1] - before[1]],
                [1, 1],
                "{name}: kernel passes (forward, backward)"
            );
        }
    }

    #[test]
    fn contiguous_data_is_read_in_place() {
        let x = Tensor::<3>::ones([2, 3, 20], &Device::flex());
        let t: FlexTensor = x.try_into_primitive::<Flex>().expect("a flex tensor");
        assert!(matches!(floats(&t), Cow::Borrowed(_)));
    }
}
