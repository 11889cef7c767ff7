//! The run-time backend choice: `DiceLoss<B>` stays generic, and code written for one concrete
//! backend (the kernels, burn-ndarray's reshape) runs when `B` turns out to be it, plain or
//! under `Autodiff` with burn's default checkpointing. These helpers move a tensor of `B` into
//! that backend's types once `B` is known.

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, Int, Tensor};
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::Autodiff;

/// Moves `value` into type `T` if it is one.
pub(crate) fn cast<S: 'static, T: 'static>(value: S) -> Result<T, S> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

/// `Some(())` when `B` is `K` or `Autodiff<K>` (no checkpointing).
pub(crate) fn is_backend<B: Backend, K: Backend>() -> Option<()> {
    let id = TypeId::of::<B>();
    (id == TypeId::of::<K>() || id == TypeId::of::<Autodiff<K, NoCheckpointing>>()).then_some(())
}

/// The inner-backend primitive of a float tensor of `B`, when `B` is `K` or `Autodiff<K>` (no
/// checkpointing); `None` for every other backend.
pub(crate) fn inner_float<B: Backend, K: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Option<K::FloatTensorPrimitive> {
    match cast::<_, Tensor<K, D>>(t) {
        Ok(t) => Some(t.into_primitive().tensor()),
        Err(t) => cast::<_, Tensor<Autodiff<K, NoCheckpointing>, D>>(t)
            .ok()
            .map(|t| t.into_primitive().tensor().primitive),
    }
}

/// [`inner_float`] for integer tensors (the same primitive under `Autodiff`).
pub(crate) fn inner_int<B: Backend, K: Backend, const D: usize>(
    t: Tensor<B, D, Int>,
) -> Option<K::IntTensorPrimitive> {
    match cast::<_, Tensor<K, D, Int>>(t) {
        Ok(t) => Some(t.into_primitive()),
        Err(t) => cast::<_, Tensor<Autodiff<K, NoCheckpointing>, D, Int>>(t)
            .ok()
            .map(|t| t.into_primitive()),
    }
}

/// `None`, else `$body` with `$k` each of the listed backend types in turn (each under its
/// attributes, a `cfg`), until one gives `Some`: how a kernel family tries the backends it was
/// written for.
macro_rules! first_backend {
    ($k:ident => $body:expr; $($(#[$attr:meta])* $ty:ty),+ $(,)?) => {{
        let out = None;
        $(
            $(#[$attr])*
            let out = out.or_else(|| {
                type $k = $ty;
                $body
            });
        )+
        out
    }};
}
pub(crate) use first_backend;
