//! The fused CPU kernels on burn-ndarray and burn-flex: raw data access, the operation (the
//! statistics with the cross-entropy or focal term in the same pass) as a [`FusedOp`] of the
//! shared skeleton, and the run-time choice of backend.
//!
//! The kernels themselves work on slices, generic over nothing but the instruction set, and
//! live in the burn-free core that both release lines share ([`burn_dice_core::cpu`]): this
//! module only reads the backends' tensors as slices and wraps the results back.

use std::borrow::Cow;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
#[cfg(feature = "flex")]
use burn::tensor::{DType, Element};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
#[cfg(feature = "flex")]
use burn_flex::{Flex, FlexTensor};
#[cfg(feature = "ndarray")]
use burn_ndarray::{NdArray, NdArrayTensor};

use super::backend::{run, unstack, Forward, FusedOp, TargetPrim};
use super::input::{Extra, PreparedTarget, Stats, Terms, Verdict};
use crate::activation::Activation;
use crate::downcast::{first_backend, is_backend};
use burn_dice_core::cpu::{self as slices, Labels, Problem, Spec, Target, TermSpec};

/// `$body` with `$t` each CPU backend built in (burn-flex with the `flex` feature, then
/// burn-ndarray with `ndarray`), until one gives `Some`.
macro_rules! on_cpu_backends {
    ($t:ident => $body:expr) => {
        first_backend!($t => $body;
            #[cfg(feature = "flex")] Flex,
            #[cfg(feature = "ndarray")] NdArray<f32>,
        )
    };
}

/// Integer labels borrowed or copied out of a backend tensor.
#[derive(Debug)]
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

/// A CPU backend whose tensors can be read as row-major slices.
trait CpuBackend: Backend {
    /// The `f32` elements in row-major order (borrowed when contiguous); `None` for other dtypes.
    fn floats(t: &Self::FloatTensorPrimitive) -> Option<Cow<'_, [f32]>>;
    /// The integer elements in row-major order; `None` for other dtypes.
    fn ints(t: &Self::IntTensorPrimitive) -> Option<LabelData<'_>>;
    /// A new `f32` tensor owning `values`.
    fn from_floats(values: Vec<f32>, shape: &[usize]) -> Self::FloatTensorPrimitive;
}

/// The elements of a burn-ndarray storage in row-major order, borrowed when contiguous.
#[cfg(feature = "ndarray")]
macro_rules! ndarray_slice {
    ($storage:expr) => {{
        let view = $storage.view();
        match view.to_slice() {
            Some(slice) => Cow::Borrowed(slice),
            None => Cow::Owned(view.iter().copied().collect()),
        }
    }};
}

#[cfg(feature = "ndarray")]
impl CpuBackend for NdArray<f32> {
    fn floats(t: &NdArrayTensor) -> Option<Cow<'_, [f32]>> {
        match t {
            NdArrayTensor::F32(s) => Some(ndarray_slice!(s)),
            _ => None,
        }
    }

    fn ints(t: &NdArrayTensor) -> Option<LabelData<'_>> {
        match t {
            NdArrayTensor::I64(s) => Some(LabelData::I64(ndarray_slice!(s))),
            NdArrayTensor::I32(s) => Some(LabelData::I32(ndarray_slice!(s))),
            _ => None,
        }
    }

    fn from_floats(values: Vec<f32>, shape: &[usize]) -> NdArrayTensor {
        NdArrayTensor::from_data(TensorData::new(values, shape.to_vec()))
    }
}

#[cfg(feature = "flex")]
fn flex_slice<E: Element + bytemuck::Pod>(t: &FlexTensor) -> Cow<'_, [E]> {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => Cow::Borrowed(&t.storage::<E>()[start..end]),
        None => Cow::Owned(t.to_contiguous().storage::<E>().to_vec()),
    }
}

#[cfg(feature = "flex")]
impl CpuBackend for Flex {
    fn floats(t: &FlexTensor) -> Option<Cow<'_, [f32]>> {
        (t.dtype() == DType::F32).then(|| flex_slice::<f32>(t))
    }

    fn ints(t: &FlexTensor) -> Option<LabelData<'_>> {
        match t.dtype() {
            DType::I64 => Some(LabelData::I64(flex_slice::<i64>(t))),
            DType::I32 => Some(LabelData::I32(flex_slice::<i32>(t))),
            _ => None,
        }
    }

    fn from_floats(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
    }
}

/// The owned options of the `extra` term (class weights read from host memory: no
/// synchronization).
fn term_spec<B: Backend>(extra: &Extra<B>) -> TermSpec {
    match extra {
        Extra::None => TermSpec::None,
        Extra::Ce(options) => TermSpec::Ce {
            class_weight: options.class_weight.as_ref().map(|w| {
                w.to_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
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

/// Runs `f` on the kernel problem of these primitives (`x`: `None` for a backward pass from
/// stored probabilities without a term, which does not read it); `None` when some tensor is
/// not `f32` (or not integer, for labels).
fn with_problem<B: CpuBackend, R>(
    x: Option<&B::FloatTensorPrimitive>,
    target: &TargetPrim<B>,
    valid: Option<&B::FloatTensorPrimitive>,
    spec: &Spec,
    f: impl FnOnce(&Problem) -> R,
) -> Option<R> {
    let xs = match x {
        Some(x) => B::floats(x)?,
        None => Cow::Borrowed(&[][..]),
    };
    let valid = match valid {
        Some(v) => Some(B::floats(v)?),
        None => None,
    };
    let (dense, labels) = match target {
        TargetPrim::Dense(t) => (Some(B::floats(t)?), None),
        TargetPrim::Indices(l) => (None, Some(B::ints(l)?)),
    };
    let target = match (&dense, &labels) {
        (Some(t), _) => Target::Dense(t),
        (_, Some(l)) => Target::Indices(l.as_labels()),
        _ => unreachable!("one target kind"),
    };
    Some(f(&spec.problem(&xs, target, valid.as_deref())))
}

/// The statistics and the term of the extra loss in one pass: the stacked `[3 + rows, batch,
/// class]` sums (see [`burn_dice_core::cpu::Term`] for the rows), and on the host whether the data passed the
/// checks.
#[derive(Debug, Clone)]
struct StatsOp {
    spec: Spec,
}

/// What the backward pass of a [`StatsOp`] starts from.
#[derive(Debug, Clone)]
struct Saved<T: Backend> {
    /// The input, where the activation is recomputed (no activation: `p = x`) or a term reads
    /// it.
    x: Option<FloatTensor<T>>,
    /// The probabilities, stored by the forward pass and overwritten by the gradient.
    probs: Option<Vec<f32>>,
    target: TargetPrim<T>,
    valid: Option<FloatTensor<T>>,
    op: StatsOp,
}

impl<T: CpuBackend> FusedOp<T> for StatsOp {
    type Host = bool;
    type State = Saved<T>;

    fn forward(
        &self,
        x: FloatTensor<T>,
        target: TargetPrim<T>,
        valid: Option<FloatTensor<T>>,
        tracked: bool,
    ) -> Option<Forward<T, Self>> {
        let spec = &self.spec;
        // Tracked: store the probabilities for the backward pass, which then needs no
        // activation and no buffer of its own (they become the gradient). With no activation
        // `p = x`: the input is kept instead (and for a term, which reads it).
        let store = tracked && spec.activation != burn_dice_core::Activation::None;
        let (sums, probs) = with_problem::<T, _>(Some(&x), &target, valid.as_ref(), spec, |p| {
            let term = spec.term(p);
            if store {
                let (sums, probs) = slices::forward_storing(p, &term);
                (sums, Some(probs))
            } else {
                (slices::forward(p, &term), None)
            }
        })?;
        let [b, c, _] = spec.dims;
        let rows = sums.sums.len() / (b * c);
        let out = T::from_floats(sums.sums, &[rows, b, c]);
        let state = tracked.then(|| {
            let keep_x = probs.is_none() || spec.term != TermSpec::None;
            Saved {
                x: keep_x.then_some(x),
                probs,
                target,
                valid,
                op: self.clone(),
            }
        });
        Some(Forward {
            out,
            rest: Vec::new(),
            host: sums.valid_data,
            state,
        })
    }

    fn backward(saved: Saved<T>, grad: FloatTensor<T>) -> FloatTensor<T> {
        let Saved {
            x,
            probs,
            target,
            valid,
            op,
        } = saved;
        let grad = T::floats(&grad).expect("the gradient of an f32 output is f32");
        let dx = with_problem::<T, _>(x.as_ref(), &target, valid.as_ref(), &op.spec, |p| {
            let term = op.spec.term(p);
            match probs {
                Some(mut probs) => {
                    slices::backward_stored(p, &term, &grad, &mut probs);
                    probs
                }
                None => slices::backward(p, &term, &grad),
            }
        })
        .expect("the forward pass read the same tensors");
        T::from_floats(dx, &op.spec.dims)
    }
}

/// Whether `B` is one of the CPU backends the kernels run on.
pub(super) fn handles<B: Backend>() -> bool {
    on_cpu_backends!(T => is_backend::<B, T>()).is_some()
}

/// See [`super::class_stats`]: the statistics and, in the same pass, the `extra` term.
pub(super) fn class_stats<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    activation: Activation,
    terms: Terms,
    extra: &Extra<B>,
) -> Option<Stats<B>> {
    let op = StatsOp {
        spec: Spec {
            dims: input.dims(),
            activation: activation.into(),
            terms,
            term: term_spec(extra),
        },
    };
    let (mut out, valid_data) = on_cpu_backends!(T => run::<B, T, _>(input, target, &op))?;
    let out = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(out.remove(0)));
    let (sums, extra) = unstack(out, extra);
    Some(Stats {
        sums,
        verdict: Verdict::Host(valid_data),
        extra: Some(extra),
    })
}

#[cfg(all(test, feature = "ndarray", feature = "flex"))]
mod tests {
    use super::*;
    use crate::kernels::generic_only;
    use crate::kernels::input::FlatTarget;
    use crate::kernels::tests::{compare_on, deferred_checks_on, panic_message, SMALL};
    use crate::DiceLossConfig;
    use burn::tensor::Tolerance;
    use burn_autodiff::Autodiff;

    #[test]
    fn fused_equals_generic_on_autodiff_ndarray() {
        compare_on::<Autodiff<NdArray<f32>>>(&Default::default(), SMALL);
    }

    #[test]
    fn fused_equals_generic_on_autodiff_flex() {
        compare_on::<Autodiff<Flex>>(&Default::default(), SMALL);
    }

    #[test]
    fn deferred_checks_fail_with_the_same_messages() {
        deferred_checks_on::<NdArray<f32>>(&Default::default());
        deferred_checks_on::<Flex>(&Default::default());
        deferred_checks_on::<Autodiff<NdArray<f32>>>(&Default::default());
        deferred_checks_on::<Autodiff<Flex>>(&Default::default());
    }

    #[test]
    fn deferred_checks_run_when_the_fused_pass_does_not() {
        // A dense target that requires a gradient takes the generic path on a backend where
        // the checks were left to the fused pass: they must still run.
        type B = Autodiff<NdArray<f32>>;
        let device = Default::default();
        let x = Tensor::<B, 4>::ones([1, 2, 2, 2], &device)
            .slice_fill([0..1, 0..1, 0..1, 0..1], f32::NAN);
        let t = Tensor::<B, 4>::ones([1, 2, 2, 2], &device).require_grad();
        let loss = DiceLossConfig::new().init::<B>(&device);
        let message = panic_message(|| drop(loss.forward(x, t)));
        assert_eq!(
            message.as_deref(),
            Some("DiceLoss: `input` holds NaN or infinite values; expected finite numbers")
        );
    }

    fn dispatch_on<B: Backend>() -> (bool, bool) {
        let device = Default::default();
        let x = Tensor::<B, 3>::ones([1, 2, 3], &device);
        let target = PreparedTarget {
            target: FlatTarget::Indices(Tensor::zeros([1, 1, 3], &device)),
            valid: None,
        };
        let fused = class_stats(
            &x,
            &target,
            Activation::Softmax,
            Terms::Linear,
            &Extra::None,
        );
        let generic = generic_only(|| crate::kernels::path::<B>() != crate::KernelPath::Generic);
        if let Some(Stats {
            sums: [i, p, t],
            verdict,
            ..
        }) = &fused
        {
            assert!(matches!(verdict, Verdict::Host(true)));
            // Softmax of equal logits: p = 1/2 everywhere; three pixels of class 0.
            let expect = |t: &Tensor<B, 2>, v: [f32; 2]| {
                t.to_data()
                    .assert_approx_eq::<f32>(&TensorData::from([v]), Tolerance::absolute(1e-6))
            };
            expect(i, [1.5, 0.0]);
            expect(p, [1.5, 1.5]);
            expect(t, [3.0, 0.0]);
        }
        assert_eq!(super::handles::<B>(), fused.is_some());
        (fused.is_some(), generic)
    }

    #[test]
    fn the_fused_path_is_taken_exactly_on_the_cpu_backends() {
        assert_eq!(dispatch_on::<NdArray<f32>>(), (true, false));
        assert_eq!(dispatch_on::<Flex>(), (true, false));
        assert_eq!(dispatch_on::<Autodiff<NdArray<f32>>>(), (true, false));
        assert_eq!(dispatch_on::<Autodiff<Flex>>(), (true, false));
        // Other checkpointing strategies take the generic path.
        type Balanced =
            Autodiff<NdArray<f32>, burn_autodiff::checkpoint::strategy::BalancedCheckpointing>;
        assert_eq!(dispatch_on::<Balanced>(), (false, false));
    }
}

#[cfg(all(test, feature = "ndarray", feature = "flex"))]
mod borrow_tests {
    use super::*;
    use burn::tensor::Distribution;

    fn borrowed<T: CpuBackend>() -> bool {
        let device = Default::default();
        let x = Tensor::<T, 4>::random([2, 3, 4, 5], Distribution::Default, &device)
            .reshape([2, 3, 20]);
        let p = x.into_primitive().tensor();
        matches!(T::floats(&p), Some(Cow::Borrowed(_)))
    }

    #[test]
    fn contiguous_data_is_read_in_place() {
        assert!(borrowed::<Flex>(), "flex");
        assert!(borrowed::<NdArray<f32>>(), "ndarray");
    }
}
