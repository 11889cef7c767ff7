//! Fused CPU kernels for the per-(sample, class) statistics every loss of the family starts
//! from (feature `cpu-kernels`, on by default).
//!
//! The generic path builds the statistics from burn ops: the activation (one tensor of the
//! input's size, kept for the backward pass), a product with the target, three sums, and for
//! class-index targets a gather and two scatter-adds; autodiff then walks that chain back. On
//! burn-ndarray (`NdArray<f32>`) and burn-flex (`Flex`), with or without `Autodiff` (its default
//! checkpointing), burn-dice instead runs one fused pass over the contiguous `f32` data that
//! computes the activation and the three sums together (SIMD lanes, both cores), and registers
//! a custom backward (burn-autodiff's `Backward` trait) that recomputes the activation and
//! writes the input's gradient in one more pass, from the closed form
//! `∂L/∂x = act'(x) · (∂L/∂I · t + ∂L/∂P · ∂P/∂p)`. Everything after the statistics (smoothing,
//! weights, the formula of each loss, the reduction) stays in burn ops on `[batch, class]`
//! tensors, so every option of every loss is covered and its gradient still comes from autodiff.
//!
//! The choice is made at run time from the backend type, so `DiceLoss<B>` stays generic and a
//! training loop needs no change; every other backend (wgpu, `f64`, other checkpointing
//! strategies) and targets or masks that themselves require a gradient take the generic path.
//! The two paths agree to float rounding (tests in this module and `tests/tests/parity.rs`, which
//! runs the MONAI fixtures through the fused path); [`generic_only`] runs code with the fused
//! kernels switched off, to compare or to rule them out.
//!
//! The data checks of `check_inputs` (finite input and target, class indices in range) read
//! the raw data the same way on these backends, in one vectorized pass each instead of a burn
//! comparison, a reduction and a read-back; on a failure the generic check runs to build the
//! same error message.
//!
//! burn-ndarray 0.21 copies the data on every `reshape`; flattening the input, the target and
//! (on the way back) the gradient to `[batch, class, pixels]` therefore cost three copies of the
//! input. burn-dice re-views a contiguous ndarray buffer instead, with its own autodiff node.
//!
//! Memory: the forward pass allocates only the `[3, batch, class]` result; the backward pass
//! allocates the input's gradient (which autodiff needs anyway) and keeps no activation.

#[cfg(feature = "cpu-kernels")]
mod cpu;
#[cfg(feature = "cpu-kernels")]
pub(crate) mod kernel;

use std::cell::Cell;

use burn::tensor::{backend::Backend, Int, Tensor};

use crate::activation::Activation;
use crate::target::PreparedTarget;

thread_local! {
    static GENERIC_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the fused CPU kernels switched off on this thread: every loss computed inside
/// takes the generic burn-ops path. For comparisons and benchmarks.
pub fn generic_only<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC_ONLY.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC_ONLY.with(|g| g.replace(true)));
    f()
}

/// Whether a loss computed now on this thread may use the fused CPU kernels: the
/// `cpu-kernels` feature is on and no [`generic_only`] call is running.
pub fn fused_enabled() -> bool {
    cfg!(feature = "cpu-kernels") && !GENERIC_ONLY.with(|g| g.get())
}

/// The three `[batch, class]` sums (intersection, prediction, target) of `input`
/// (`[batch, class, pixels]`, raw) after `activation`, if a fused kernel handles this backend
/// and these tensors; `None` means: use the generic path.
pub(crate) fn class_stats<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    activation: Activation,
    squared_pred: bool,
) -> Option<[Tensor<B, 2>; 3]> {
    if !fused_enabled() {
        return None;
    }
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::class_stats(input, target, activation, squared_pred)
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = (input, target, activation, squared_pred);
        None
    }
}

/// Whether `t` holds only finite values, answered from the raw data in one vectorized pass on
/// the CPU backends; `None` elsewhere (the caller then checks with burn ops).
pub(crate) fn all_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<bool> {
    if !fused_enabled() {
        return None;
    }
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::all_finite(t)
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = t;
        None
    }
}

/// Whether every class index of `t` is in `0..classes` or equals `ignore`, as
/// [`all_finite`].
pub(crate) fn labels_in_range<B: Backend, const D: usize>(
    t: &Tensor<B, D, Int>,
    classes: usize,
    ignore: Option<usize>,
) -> Option<bool> {
    if !fused_enabled() {
        return None;
    }
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::labels_in_range(t, classes, ignore)
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = (t, classes, ignore);
        None
    }
}

/// `t.reshape(shape)`, without the data copy burn-ndarray 0.21 makes on every reshape when the
/// data is contiguous (plain or autodiff `NdArray<f32>`, the gradient reshaped back the same
/// way); burn's `reshape` everywhere else.
pub(crate) fn reshape<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D>,
    shape: [usize; D2],
) -> Tensor<B, D2> {
    #[cfg(feature = "cpu-kernels")]
    let t = match fused_enabled() {
        true => match cpu::reshape(t, shape) {
            Ok(out) => return out,
            Err(t) => t,
        },
        false => t,
    };
    t.reshape(shape)
}

/// [`reshape`] for class indices.
pub(crate) fn reshape_int<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D, Int>,
    shape: [usize; D2],
) -> Tensor<B, D2, Int> {
    #[cfg(feature = "cpu-kernels")]
    let t = match fused_enabled() {
        true => match cpu::reshape_int(t, shape) {
            Ok(out) => return out,
            Err(t) => t,
        },
        false => t,
    };
    t.reshape(shape)
}
