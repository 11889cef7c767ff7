//! The fused statistics on burn-ndarray and burn-flex: raw data access, the autodiff operation
//! with its custom backward, and the run-time choice of backend.

use std::any::TypeId;
use std::borrow::Cow;
use std::marker::PhantomData;

use burn::tensor::backend::Backend;
#[cfg(feature = "ndarray")]
use burn::tensor::ops::FloatTensorOps;
#[cfg(feature = "ndarray")]
use burn::tensor::TensorMetadata;
#[cfg(feature = "flex")]
use burn::tensor::{DType, Element};
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
#[cfg(feature = "flex")]
use burn_flex::{Flex, FlexTensor};
#[cfg(feature = "ndarray")]
use burn_ndarray::{NdArray, NdArrayTensor};

use super::backend::{cast, inner_float, inner_int, primitives, split, TargetPrim};
use super::input::{CeOptions, FocalOptions, PreparedTarget, Stats, Terms, Verdict};
use crate::activation::Activation;
use kernel::ce::CeProblem;
use kernel::focal::FocalProblem;
use kernel::{Labels, Problem, Target};

pub(crate) mod kernel;

/// Runs `$body` with `$t` each CPU backend built in (burn-flex with the `flex` feature, then
/// burn-ndarray with `ndarray`), until one gives `Some`.
macro_rules! on_cpu_backends {
    ($t:ident => $body:expr) => {{
        let out = None;
        #[cfg(feature = "flex")]
        let out = out.or_else(|| {
            type $t = Flex;
            $body
        });
        #[cfg(feature = "ndarray")]
        let out = out.or_else(|| {
            type $t = NdArray<f32>;
            $body
        });
        out
    }};
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

/// Shape and options of one statistics problem.
#[derive(Debug, Clone, Copy)]
struct Spec {
    dims: [usize; 3],
    activation: Activation,
    terms: Terms,
}

/// Runs `f` on the kernel problem of these primitives (`x`: `None` for a backward pass from
/// stored probabilities, which does not read it); `None` when some tensor is not `f32` (or not
/// integer, for labels).
fn with_problem<B: CpuBackend, R>(
    x: Option<&B::FloatTensorPrimitive>,
    target: &TargetPrim<B>,
    valid: Option<&B::FloatTensorPrimitive>,
    spec: Spec,
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
    let [batch, classes, pixels] = spec.dims;
    Some(f(&Problem {
        x: &xs,
        target,
        valid: valid.as_deref(),
        batch,
        classes,
        pixels,
        activation: spec.activation,
        terms: spec.terms,
    }))
}

/// The stacked `[3, batch, class]` sums and whether the data passed the checks; with `store`
/// also the probabilities.
fn forward_inner<B: CpuBackend>(
    x: &B::FloatTensorPrimitive,
    target: &TargetPrim<B>,
    valid: Option<&B::FloatTensorPrimitive>,
    spec: Spec,
    store: bool,
) -> Option<(B::FloatTensorPrimitive, bool, Option<Vec<f32>>)> {
    let (sums, probs) = with_problem::<B, _>(Some(x), target, valid, spec, |p| match store {
        true => {
            let (sums, probs) = kernel::forward_storing(p);
            (sums, Some(probs))
        }
        false => (kernel::forward(p), None),
    })?;
    Some((
        B::from_floats(sums.sums, &[3, spec.dims[0], spec.dims[1]]),
        sums.valid_data,
        probs,
    ))
}

/// What the backward pass starts from.
#[derive(Debug, Clone)]
enum Saved<B: Backend> {
    /// The input: the activation is recomputed (no activation, where `p = x`).
    Input(B::FloatTensorPrimitive),
    /// The probabilities, stored by the forward pass and overwritten by the gradient.
    Probs(Vec<f32>),
}

/// The custom backward of the fused statistics.
#[derive(Debug)]
struct StatsBackward;

impl<B: CpuBackend> Backward<B, 1> for StatsBackward {
    type State = (
        Saved<B>,
        TargetPrim<B>,
        Option<B::FloatTensorPrimitive>,
        Spec,
    );

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let (saved, target, valid, spec) = ops.state;
        let grad = B::floats(&grad).expect("the gradient of an f32 output is f32");
        let dx = match saved {
            Saved::Input(x) => with_problem::<B, _>(Some(&x), &target, valid.as_ref(), spec, |p| {
                kernel::backward(p, &grad)
            }),
            Saved::Probs(mut probs) => {
                with_problem::<B, _>(None, &target, valid.as_ref(), spec, |p| {
                    kernel::backward_stored(p, &grad, &mut probs)
                })
                .map(|()| probs)
            }
        }
        .expect("the forward pass read the same tensors");
        grads.register::<B>(parent.id, B::from_floats(dx, &spec.dims));
    }
}

/// `B` is the plain CPU backend `T`.
fn plain<B: Backend, T: CpuBackend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    spec: Spec,
) -> Option<Stats<B>> {
    if TypeId::of::<B>() != TypeId::of::<T>() {
        return None;
    }
    let (target, valid) = primitives::<B, T>(target)?;
    let x = inner_float::<B, T, 3>(input.clone())?;
    let (out, valid_data, _) = forward_inner::<T>(&x, &target, valid.as_ref(), spec, false)?;
    let out: Tensor<B, 3> =
        cast(Tensor::<T, 3>::from_primitive(TensorPrimitive::Float(out))).ok()?;
    Some(Stats {
        sums: split(out),
        verdict: Verdict::Host(valid_data),
        extra: None,
    })
}

/// `B` is `Autodiff<T>` (no checkpointing).
fn autodiff<B: Backend, T: CpuBackend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    spec: Spec,
) -> Option<Stats<B>> {
    type Ad<T> = Autodiff<T, NoCheckpointing>;
    if TypeId::of::<B>() != TypeId::of::<Ad<T>>() {
        return None;
    }
    if target.tracked() {
        return None;
    }
    let (target, valid) = primitives::<B, T>(target)?;
    let x: Tensor<Ad<T>, 3> = cast(input.clone()).ok()?;
    let x = x.into_primitive().tensor();
    let (out, valid_data) = match StatsBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // Store the probabilities for the backward pass: it then needs no activation and
            // no buffer of its own (they become the gradient). With no activation `p = x`.
            let store = spec.activation != Activation::None;
            let (out, valid_data, probs) =
                forward_inner::<T>(&x.primitive, &target, valid.as_ref(), spec, store)?;
            let saved = match probs {
                Some(probs) => Saved::Probs(probs),
                None => Saved::Input(x.primitive),
            };
            (prep.finish((saved, target, valid, spec), out), valid_data)
        }
        OpsKind::UnTracked(prep) => {
            let (out, ok, _) =
                forward_inner::<T>(&x.primitive, &target, valid.as_ref(), spec, false)?;
            (prep.finish(out), ok)
        }
    };
    let out: Tensor<B, 3> = cast(Tensor::<Ad<T>, 3>::from_primitive(TensorPrimitive::Float(
        out,
    )))
    .ok()?;
    Some(Stats {
        sums: split(out),
        verdict: Verdict::Host(valid_data),
        extra: None,
    })
}

/// Runs `f` on the `f32` data of `t` if `B` is one of the CPU backends (plain or autodiff).
fn float_data<B: Backend, const D: usize, R>(
    t: &Tensor<B, D>,
    f: impl Fn(&[f32]) -> R,
) -> Option<R> {
    fn on<B: Backend, T: CpuBackend, const D: usize, R>(
        t: &Tensor<B, D>,
        f: &impl Fn(&[f32]) -> R,
    ) -> Option<R> {
        let p = inner_float::<B, T, D>(t.clone())?;
        Some(f(&T::floats(&p)?))
    }
    on_cpu_backends!(T => on::<B, T, D, R>(t, &f))
}

/// Runs `f` on the labels of `t` if `B` is one of the CPU backends (plain or autodiff).
fn int_data<B: Backend, const D: usize, R>(
    t: &Tensor<B, D, Int>,
    f: impl Fn(Labels) -> R,
) -> Option<R> {
    fn on<B: Backend, T: CpuBackend, const D: usize, R>(
        t: &Tensor<B, D, Int>,
        f: &impl Fn(Labels) -> R,
    ) -> Option<R> {
        let p = inner_int::<B, T, D>(t.clone())?;
        Some(f(T::ints(&p)?.as_labels()))
    }
    on_cpu_backends!(T => on::<B, T, D, R>(t, &f))
}

/// See [`super::all_finite`].
pub(super) fn all_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<bool> {
    float_data(t, kernel::all_finite)
}

/// See [`super::labels_in_range`].
pub(super) fn labels_in_range<B: Backend, const D: usize>(
    t: &Tensor<B, D, Int>,
    classes: usize,
    ignore: Option<usize>,
) -> Option<bool> {
    int_data(t, |l| kernel::labels_in_range(l, classes, ignore))
}

/// burn-ndarray 0.21 copies the data on every reshape (`to_shape(..).into_shared()`); a
/// contiguous array only needs new dimensions over the same shared buffer.
#[cfg(feature = "ndarray")]
fn ndarray_reshape(t: NdArrayTensor, shape: &[usize]) -> NdArrayTensor {
    macro_rules! zero_copy {
        ($($variant:ident),*) => {
            match t {
                $(NdArrayTensor::$variant(s) => {
                    let array = s.into_shared();
                    if array.is_standard_layout() {
                        if let Ok(reshaped) = array.clone().into_shape_with_order(shape.to_vec()) {
                            return reshaped.into();
                        }
                    }
                    NdArray::<f32>::float_reshape(array.into(), shape.into())
                })*
                other => NdArray::<f32>::float_reshape(other, shape.into()),
            }
        };
    }
    zero_copy!(F32, I64, I32)
}

/// The autodiff reshape of [`ndarray_reshape`]: the gradient is reshaped back the same way.
#[cfg(feature = "ndarray")]
#[derive(Debug)]
struct ReshapeBackward;

#[cfg(feature = "ndarray")]
impl Backward<NdArray<f32>, 1> for ReshapeBackward {
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<NdArray<f32>>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            grads.register::<NdArray<f32>>(parent.id, ndarray_reshape(grad, &ops.state));
        }
    }
}

/// `t.reshape(shape)` without burn-ndarray's copy, where `B` is `NdArray<f32>` (plain or under
/// `Autodiff`); `Err(t)` for every other backend.
#[cfg(feature = "ndarray")]
pub(super) fn reshape<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D>,
    shape: [usize; D2],
) -> Result<Tensor<B, D2>, Tensor<B, D>> {
    type Nd = NdArray<f32>;
    type AdNd = Autodiff<Nd, NoCheckpointing>;
    let t = match cast::<Tensor<B, D>, Tensor<Nd, D>>(t) {
        Ok(t) => {
            let out = ndarray_reshape(t.into_primitive().tensor(), &shape);
            let out = Tensor::<Nd, D2>::from_primitive(TensorPrimitive::Float(out));
            return Ok(cast(out).expect("B is NdArray<f32>"));
        }
        Err(t) => t,
    };
    let t = match cast::<Tensor<B, D>, Tensor<AdNd, D>>(t) {
        Ok(t) => {
            let x = t.into_primitive().tensor();
            let original = x.primitive.shape().dims::<D>().to_vec();
            let out = ndarray_reshape(x.primitive.clone(), &shape);
            let out = match ReshapeBackward
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(original, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            let out = Tensor::<AdNd, D2>::from_primitive(TensorPrimitive::Float(out));
            return Ok(cast(out).expect("B is Autodiff<NdArray<f32>>"));
        }
        Err(t) => t,
    };
    Err(t)
}

/// Without burn-ndarray there is no copying reshape to avoid.
#[cfg(not(feature = "ndarray"))]
pub(super) fn reshape<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D>,
    _shape: [usize; D2],
) -> Result<Tensor<B, D2>, Tensor<B, D>> {
    Err(t)
}

/// [`reshape`] for integer tensors (no autodiff node: integer tensors carry no gradient).
#[cfg(feature = "ndarray")]
pub(super) fn reshape_int<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D, Int>,
    shape: [usize; D2],
) -> Result<Tensor<B, D2, Int>, Tensor<B, D, Int>> {
    fn on<
        B: Backend,
        T: Backend<IntTensorPrimitive = NdArrayTensor>,
        const D: usize,
        const D2: usize,
    >(
        t: Tensor<B, D, Int>,
        shape: [usize; D2],
    ) -> Result<Tensor<B, D2, Int>, Tensor<B, D, Int>> {
        let t: Tensor<T, D, Int> = cast(t)?;
        let out = Tensor::<T, D2, Int>::from_primitive(ndarray_reshape(t.into_primitive(), &shape));
        Ok(cast(out).expect("same backend"))
    }
    on::<B, NdArray<f32>, D, D2>(t, shape)
        .or_else(|t| on::<B, Autodiff<NdArray<f32>, NoCheckpointing>, D, D2>(t, shape))
}

/// Without burn-ndarray there is no copying reshape to avoid.
#[cfg(not(feature = "ndarray"))]
pub(super) fn reshape_int<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D, Int>,
    _shape: [usize; D2],
) -> Result<Tensor<B, D2, Int>, Tensor<B, D, Int>> {
    Err(t)
}

/// A fused operation of the input alone (target and mask are data): its options and its
/// forward and backward kernels on the raw data (the autodiff state of [`InputOpBackward`]).
trait InputOp: Clone + Send + std::fmt::Debug + 'static {
    /// `[batch, class, pixels]` of the input.
    fn dims(&self) -> [usize; 3];
    /// The shape of the output.
    fn out_shape(&self) -> Vec<usize>;
    /// The output, from the data of `problem` (whose activation is not read).
    fn forward(&self, problem: &Problem) -> Vec<f32>;
    /// The input's gradient for the output's gradient `grad`.
    fn backward(&self, problem: &Problem, grad: &[f32]) -> Vec<f32>;

    /// Runs `f` on the kernel problem of these primitives (see [`with_problem`]).
    fn with<B: CpuBackend, R>(
        &self,
        x: &B::FloatTensorPrimitive,
        target: &TargetPrim<B>,
        valid: Option<&B::FloatTensorPrimitive>,
        f: impl FnOnce(&Problem) -> R,
    ) -> Option<R> {
        let spec = Spec {
            dims: self.dims(),
            activation: Activation::None,
            terms: Terms::Linear,
        };
        with_problem::<B, _>(Some(x), target, valid, spec, f)
    }
}

/// The options of the cross-entropy term: per sample `[Σ loss, Σ norm]`, `[2, batch]`.
#[derive(Debug, Clone)]
struct CeSpec {
    dims: [usize; 3],
    class_weight: Option<Vec<f32>>,
    pos_weight: f32,
    label_smoothing: f32,
}

impl CeSpec {
    fn problem<'a>(&'a self, base: &Problem<'a>) -> CeProblem<'a> {
        CeProblem {
            base: *base,
            class_weight: self.class_weight.as_deref(),
            pos_weight: self.pos_weight,
            label_smoothing: self.label_smoothing,
        }
    }
}

impl InputOp for CeSpec {
    fn dims(&self) -> [usize; 3] {
        self.dims
    }
    fn out_shape(&self) -> Vec<usize> {
        vec![2, self.dims[0]]
    }
    fn forward(&self, problem: &Problem) -> Vec<f32> {
        kernel::ce::forward(&self.problem(problem))
    }
    fn backward(&self, problem: &Problem, grad: &[f32]) -> Vec<f32> {
        // The norm row does not depend on the input.
        kernel::ce::backward(&self.problem(problem), &grad[..self.dims[0]])
    }
}

/// The options of the focal term: per (sample, class) sums, `[batch, class]`.
#[derive(Debug, Clone, Copy)]
struct FocalSpec {
    dims: [usize; 3],
    gamma: f32,
    alpha: Option<f32>,
}

impl FocalSpec {
    fn problem<'a>(&self, base: &Problem<'a>) -> FocalProblem<'a> {
        FocalProblem {
            base: *base,
            gamma: self.gamma,
            alpha: self.alpha,
        }
    }
}

impl InputOp for FocalSpec {
    fn dims(&self) -> [usize; 3] {
        self.dims
    }
    fn out_shape(&self) -> Vec<usize> {
        vec![self.dims[0], self.dims[1]]
    }
    fn forward(&self, problem: &Problem) -> Vec<f32> {
        kernel::focal::forward(&self.problem(problem))
    }
    fn backward(&self, problem: &Problem, grad: &[f32]) -> Vec<f32> {
        kernel::focal::backward(&self.problem(problem), grad)
    }
}

/// The custom backward of an [`InputOp`].
#[derive(Debug)]
struct InputOpBackward<S>(PhantomData<S>);

impl<B: CpuBackend, S: InputOp> Backward<B, 1> for InputOpBackward<S> {
    type State = (
        B::FloatTensorPrimitive,
        TargetPrim<B>,
        Option<B::FloatTensorPrimitive>,
        S,
    );

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let (x, target, valid, op) = ops.state;
        let grad = B::floats(&grad).expect("the gradient of an f32 output is f32");
        let dx = op
            .with::<B, _>(&x, &target, valid.as_ref(), |p| op.backward(p, &grad))
            .expect("the forward pass read the same tensors");
        grads.register::<B>(parent.id, B::from_floats(dx, &op.dims()));
    }
}

/// Runs `op` where `B` is `T` or `Autodiff<T>` (no checkpointing), registering its backward
/// when the input is tracked; `None` for other backends, tracked targets, or data the kernel
/// cannot read.
fn fused_op<B: Backend, T: CpuBackend, S: InputOp>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    op: &S,
) -> Option<Tensor<B, 2>> {
    type Ad<T> = Autodiff<T, NoCheckpointing>;
    let forward = |x: &T::FloatTensorPrimitive, t: &TargetPrim<T>, v: Option<&_>| {
        let out = op.with::<T, _>(x, t, v, |p| op.forward(p))?;
        Some(T::from_floats(out, &op.out_shape()))
    };
    if TypeId::of::<B>() == TypeId::of::<T>() {
        let (t, v) = primitives::<B, T>(target)?;
        let x = inner_float::<B, T, 3>(input.clone())?;
        let out = forward(&x, &t, v.as_ref())?;
        return cast(Tensor::<T, 2>::from_primitive(TensorPrimitive::Float(out))).ok();
    }
    if TypeId::of::<B>() != TypeId::of::<Ad<T>>() || target.tracked() {
        return None;
    }
    let (t, v) = primitives::<B, T>(target)?;
    let x: Tensor<Ad<T>, 3> = cast(input.clone()).ok()?;
    let x = x.into_primitive().tensor();
    let out = forward(&x.primitive, &t, v.as_ref())?;
    let out = match InputOpBackward::<S>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, t, v, op.clone()), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    cast(Tensor::<Ad<T>, 2>::from_primitive(TensorPrimitive::Float(
        out,
    )))
    .ok()
}

/// [`fused_op`] on burn-flex or burn-ndarray.
fn input_op<B: Backend, S: InputOp>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    op: S,
) -> Option<Tensor<B, 2>> {
    if op.dims().contains(&0) {
        return None;
    }
    on_cpu_backends!(T => fused_op::<B, T, S>(input, target, &op))
}

/// See [`super::ce_sums`].
pub(super) fn ce_sums<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    options: &CeOptions<B>,
) -> Option<[Tensor<B, 1>; 2]> {
    let dims = input.dims();
    let spec = CeSpec {
        dims,
        // On the CPU the weights are read from host memory: no device synchronization.
        class_weight: options.class_weight.as_ref().map(|w| {
            w.to_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 weights")
        }),
        pos_weight: options.pos_weight,
        label_smoothing: options.label_smoothing as f32,
    };
    let out = input_op(input, target, spec)?;
    Some([0, 1].map(|s| out.clone().narrow(0, s, 1).reshape([dims[0]])))
}

/// See [`super::focal_sums`].
pub(super) fn focal_sums<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    options: FocalOptions,
) -> Option<Tensor<B, 2>> {
    let dims = input.dims();
    let spec = FocalSpec {
        dims,
        gamma: options.gamma as f32,
        alpha: options.alpha.map(|a| a as f32),
    };
    input_op(input, target, spec)
}

/// Whether `B` is one of the CPU backends the kernels run on.
pub(super) fn handles<B: Backend>() -> bool {
    let id = TypeId::of::<B>();
    on_cpu_backends!(T => {
        (id == TypeId::of::<T>() || id == TypeId::of::<Autodiff<T, NoCheckpointing>>())
            .then_some(())
    })
    .is_some()
}

/// See [`super::class_stats`].
pub(super) fn class_stats<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    activation: Activation,
    terms: Terms,
) -> Option<Stats<B>> {
    let spec = Spec {
        dims: input.dims(),
        activation,
        terms,
    };
    if spec.dims.contains(&0) {
        return None;
    }
    on_cpu_backends!(T => autodiff::<B, T>(input, target, spec))
        .or_else(|| on_cpu_backends!(T => plain::<B, T>(input, target, spec)))
}

#[cfg(all(test, feature = "ndarray", feature = "flex"))]
mod tests {
    use super::*;
    use crate::kernels::generic_only;
    use crate::kernels::input::FlatTarget;
    use crate::kernels::tests::{compare_on, deferred_checks_on, panic_message, SMALL};
    use crate::DiceLossConfig;
    use burn::tensor::Tolerance;

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
        let fused = class_stats(&x, &target, Activation::Softmax, Terms::Linear);
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

#[cfg(all(test, feature = "ndarray", feature = "flex"))]
mod reshape_tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<NdArray<f32>>;

    #[test]
    fn ndarray_reshape_matches_burns_with_gradients() {
        let device = Default::default();
        let base = Tensor::<Ad, 4>::random([2, 3, 4, 5], Distribution::Default, &device);
        let weights = Tensor::<Ad, 3>::random([2, 3, 20], Distribution::Default, &device);
        // Contiguous, and a permuted (non-contiguous) view that must fall back to a copy.
        for permuted in [false, true] {
            // Value and input gradient of `weights · reshape(x)`, one graph per call.
            let run = |ours: bool| {
                let x = base.clone().detach().require_grad();
                let input = if permuted {
                    x.clone().swap_dims(2, 3)
                } else {
                    x.clone()
                };
                let y = if ours {
                    reshape(input, [2, 3, 20]).expect("ndarray handled")
                } else {
                    input.reshape([2, 3, 20])
                };
                let value = y.to_data();
                let grads = (y * weights.clone()).sum().backward();
                (value, x.grad(&grads).expect("tracked").to_data())
            };
            let ((v, g), (v_ref, g_ref)) = (run(true), run(false));
            v.assert_approx_eq::<f32>(&v_ref, Tolerance::absolute(0.0));
            g.assert_approx_eq::<f32>(&g_ref, Tolerance::absolute(0.0));
        }
        let labels = Tensor::<Ad, 1, Int>::arange(0..120, &device).reshape([2, 3, 4, 5]);
        let flat = reshape_int(labels.clone(), [2, 3, 20]).expect("ndarray handled");
        assert_eq!(flat.to_data(), labels.reshape([2, 3, 20]).to_data());
        // Other backends are left to burn.
        let flex = Tensor::<Flex, 2>::zeros([2, 3], &Default::default());
        assert!(reshape(flex, [6]).is_err());
    }
}
