//! The skeleton both kernel families run on: a fused operation ([`FusedOp`]) says how to
//! compute its outputs and its input's gradient on one backend `K`; [`run`] does the rest for
//! a loss's backend `B`: checks that `B` is `K` or `Autodiff<K>` (burn's default
//! checkpointing), moves the tensors into `K`'s primitives, registers the operation's backward
//! with burn-autodiff when the input is tracked, and hands the outputs back as `B`'s.

use std::any::TypeId;
use std::marker::PhantomData;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;

use super::input::{Extra, ExtraSums, FlatTarget, PreparedTarget};
use crate::downcast::{cast, inner_float, inner_int};

/// The target as primitives of the inner backend.
#[derive(Debug, Clone)]
pub(super) enum TargetPrim<B: Backend> {
    Dense(B::FloatTensorPrimitive),
    Indices(B::IntTensorPrimitive),
}

/// The inner-backend primitives of the prepared target and mask (of backend `B`, known to be
/// `K` or `Autodiff<K>`).
fn primitives<B: Backend, K: Backend>(
    target: &PreparedTarget<B>,
) -> Option<(TargetPrim<K>, Option<K::FloatTensorPrimitive>)> {
    let target_prim = match &target.target {
        FlatTarget::Dense(t) => TargetPrim::Dense(inner_float::<B, K, 3>(t.clone())?),
        FlatTarget::Indices(l) => TargetPrim::Indices(inner_int::<B, K, 3>(l.clone())?),
    };
    let valid = match &target.valid {
        Some(v) => Some(inner_float::<B, K, 3>(v.clone())?),
        None => None,
    };
    Some((target_prim, valid))
}

/// The `[3 + rows, batch, class]` output of a statistics pass as the three `[batch, class]`
/// sums and the sums of the `extra` term, whose rows follow them: the cross-entropy's loss and
/// norm (rows 3 and 4, summed over the classes: `[batch]` each), the focal term (row 3).
pub(super) fn unstack<B: Backend>(
    stacked: Tensor<B, 3>,
    extra: &Extra<B>,
) -> ([Tensor<B, 2>; 3], ExtraSums<B>) {
    let [_, b, c] = stacked.dims();
    let row = |r: usize| stacked.clone().narrow(0, r, 1).reshape([b, c]);
    let extra = match extra {
        Extra::None => ExtraSums::None,
        Extra::Ce(_) => ExtraSums::Ce([3, 4].map(|r| row(r).sum_dim(1).reshape([b]))),
        Extra::Focal(_) => ExtraSums::Focal(row(3)),
    };
    ([0, 1, 2].map(row), extra)
}

/// What the forward pass of a [`FusedOp`] returns on backend `K`.
pub(super) struct Forward<K: Backend, O: FusedOp<K>> {
    /// The output whose gradient flows back to the input.
    pub out: FloatTensor<K>,
    /// Outputs without a gradient (the device verdict of the CubeCL kernels).
    pub rest: Vec<FloatTensor<K>>,
    /// What the pass found on the host (the verdict of the CPU kernels).
    pub host: O::Host,
    /// What the backward pass needs, when the forward pass was asked for it.
    pub state: Option<O::State>,
}

/// One fused operation of a kernel family on backend `K`: the steps that differ between the
/// families. Everything else is [`run`]'s.
pub(super) trait FusedOp<K: Backend>: Sized + 'static {
    /// A result known on the host after the forward pass.
    type Host;
    /// What the backward pass needs.
    type State: Clone + Send + std::fmt::Debug + 'static;

    /// The forward pass on the input `x` (`[batch, class, pixels]`), the target and the
    /// validity weights; with `tracked`, [`Forward::state`] must be set. `None` when the
    /// kernel does not read these tensors (their element types).
    fn forward(
        &self,
        x: FloatTensor<K>,
        target: TargetPrim<K>,
        valid: Option<FloatTensor<K>>,
        tracked: bool,
    ) -> Option<Forward<K, Self>>;

    /// The input's gradient from the saved `state` and the gradient of [`Forward::out`].
    fn backward(state: Self::State, grad: FloatTensor<K>) -> FloatTensor<K>;
}

/// burn-autodiff's backward step of a [`FusedOp`].
struct FusedBackward<O>(PhantomData<fn() -> O>);

impl<O> std::fmt::Debug for FusedBackward<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FusedBackward<{}>", std::any::type_name::<O>())
    }
}

impl<K: Backend, O: FusedOp<K>> Backward<K, 1> for FusedBackward<O> {
    type State = O::State;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<K>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            grads.register::<K>(parent.id, O::backward(ops.state, grad));
        }
    }
}

/// Runs `op` on `input` and `target` where `B` is `K` or `Autodiff<K>` (no checkpointing),
/// registering its backward when the input is tracked: the outputs as primitives of `B`
/// ([`Forward::out`] first, then [`Forward::rest`]) and the host result. `None` for other
/// backends, an empty input, a dense target or mask that requires a gradient (the kernels
/// give gradients to the input only), or tensors the kernel does not read.
pub(super) fn run<B: Backend, K: Backend, O: FusedOp<K>>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    op: &O,
) -> Option<(Vec<B::FloatTensorPrimitive>, O::Host)> {
    type Ad<K> = Autodiff<K, NoCheckpointing>;
    let plain = TypeId::of::<B>() == TypeId::of::<K>();
    if !(plain || TypeId::of::<B>() == TypeId::of::<Ad<K>>()) {
        return None;
    }
    if target.tracked() || input.dims().contains(&0) {
        return None;
    }
    let (target, valid) = primitives::<B, K>(target)?;
    let to_b = |p: FloatTensor<Ad<K>>| {
        cast::<_, B::FloatTensorPrimitive>(p).unwrap_or_else(|_| unreachable!("B is Ad<K>"))
    };
    if plain {
        let x = inner_float::<B, K, 3>(input.clone())?;
        let Forward {
            out, rest, host, ..
        } = op.forward(x, target, valid, false)?;
        let outputs = std::iter::once(out).chain(rest).map(|p| {
            cast::<_, B::FloatTensorPrimitive>(p).unwrap_or_else(|_| unreachable!("B is K"))
        });
        return Some((outputs.collect(), host));
    }
    let x: Tensor<Ad<K>, 3> = cast(input.clone()).ok()?;
    let x = x.into_primitive().tensor();
    let (out, rest, host) = match FusedBackward::<O>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let f = op.forward(x.primitive, target, valid, true)?;
            let state = f.state.expect("a tracked forward pass returns its state");
            (prep.finish(state, f.out), f.rest, f.host)
        }
        OpsKind::UnTracked(prep) => {
            let f = op.forward(x.primitive, target, valid, false)?;
            (prep.finish(f.out), f.rest, f.host)
        }
    };
    // The other outputs carry no gradient.
    let rest = rest.into_iter().map(<Ad<K> as AutodiffBackend>::from_inner);
    let outputs = std::iter::once(out).chain(rest).map(to_b).collect();
    Some((outputs, host))
}
