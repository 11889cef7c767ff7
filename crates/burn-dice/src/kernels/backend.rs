//! The run-time choice of backend that both kernel families make: `DiceLoss<B>` stays generic,
//! and a kernel runs when `B` turns out to be one of the backends it was written for (plain,
//! or under `Autodiff` with burn's default checkpointing). These helpers move a tensor of `B`
//! into that backend's primitives once its type is known.

use std::any::Any;

use burn::tensor::{backend::Backend, Int, Tensor};
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::Autodiff;

use super::input::{FlatTarget, PreparedTarget};

/// The target as primitives of the inner backend.
#[derive(Debug, Clone)]
pub(super) enum TargetPrim<B: Backend> {
    Dense(B::FloatTensorPrimitive),
    Indices(B::IntTensorPrimitive),
}

/// Moves `value` into type `T` if it is one (the run-time backend choice).
pub(super) fn cast<S: 'static, T: 'static>(value: S) -> Result<T, S> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

/// The inner-backend primitive of a float tensor of `B`, when `B` is `T` or `Autodiff<T>` (no
/// checkpointing); `None` for every other backend.
pub(super) fn inner_float<B: Backend, T: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Option<T::FloatTensorPrimitive> {
    match cast::<_, Tensor<T, D>>(t) {
        Ok(t) => Some(t.into_primitive().tensor()),
        Err(t) => cast::<_, Tensor<Autodiff<T, NoCheckpointing>, D>>(t)
            .ok()
            .map(|t| t.into_primitive().tensor().primitive),
    }
}

/// [`inner_float`] for integer tensors (the same primitive under `Autodiff`).
pub(super) fn inner_int<B: Backend, T: Backend, const D: usize>(
    t: Tensor<B, D, Int>,
) -> Option<T::IntTensorPrimitive> {
    match cast::<_, Tensor<T, D, Int>>(t) {
        Ok(t) => Some(t.into_primitive()),
        Err(t) => cast::<_, Tensor<Autodiff<T, NoCheckpointing>, D, Int>>(t)
            .ok()
            .map(|t| t.into_primitive()),
    }
}

/// The inner-backend primitives of the prepared target and mask (of backend `B`, known to be
/// `T` or `Autodiff<T>`).
pub(super) fn primitives<B: Backend, T: Backend>(
    target: &PreparedTarget<B>,
) -> Option<(TargetPrim<T>, Option<T::FloatTensorPrimitive>)> {
    let target_prim = match &target.target {
        FlatTarget::Dense(t) => TargetPrim::Dense(inner_float::<B, T, 3>(t.clone())?),
        FlatTarget::Indices(l) => TargetPrim::Indices(inner_int::<B, T, 3>(l.clone())?),
    };
    let valid = match &target.valid {
        Some(v) => Some(inner_float::<B, T, 3>(v.clone())?),
        None => None,
    };
    Some((target_prim, valid))
}

/// The `[3, batch, class]` stacked sums as three `[batch, class]` tensors.
pub(super) fn split<B: Backend>(stacked: Tensor<B, 3>) -> [Tensor<B, 2>; 3] {
    let [_, b, c] = stacked.dims();
    [0, 1, 2].map(|s| stacked.clone().narrow(0, s, 1).reshape([b, c]))
}
