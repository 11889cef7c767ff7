//! Fused CPU kernels for the per-(sample, class) statistics every loss of the family starts
//! from (feature `cpu-kernels`, on by default).
//!
//! The generic path builds the statistics from burn ops: the activation (one tensor of the
//! input's size, kept for the backward pass), a product with the target, three sums, and for
//! class-index targets a gather and two scatter-adds; autodiff then walks that chain back. On
//! burn-ndarray (`NdArray<f32>`) and burn-flex (`Flex`), with or without `Autodiff` (its default
//! checkpointing), burn-dice instead runs one fused pass over the contiguous `f32` data that
//! computes the activation and the three sums together (SIMD lanes: SSE2, AVX2 or AVX-512,
//! whichever the CPU has; both cores), and registers a custom backward (burn-autodiff's
//! `Backward` trait) that writes the input's gradient in one more pass, from the closed form
//! `∂L/∂x = act'(x) · (∂L/∂I · t + ∂L/∂P · ∂P/∂p)`. Everything after the statistics (smoothing,
//! weights, the formula of each loss, the reduction) stays in burn ops on `[batch, class]`
//! tensors, so every option of every loss is covered and its gradient still comes from autodiff.
//!
//! When the input requires a gradient, the forward pass also stores the probabilities, and the
//! backward pass overwrites them in place with the gradient: no activation to recompute and no
//! second buffer. (With no activation `p = x` and nothing is stored.)
//!
//! The cross-entropy of `DiceCELoss` and the focal term of `DiceFocalLoss` have kernels of
//! their own in the same mould (`fused/kernel/ce.rs`, `fused/kernel/focal.rs`): per sample
//! (per sample and class) sums in one pass, the closed-form gradient in one more, every option
//! of the term covered; the normalization and weights stay burn ops.
//!
//! The choice is made at run time from the backend type, so `DiceLoss<B>` stays generic and a
//! training loop needs no change; every other backend (wgpu, `f64`, other checkpointing
//! strategies) and targets or masks that themselves require a gradient take the generic path.
//! The two paths agree to float rounding (tests in this module and `tests/tests/parity.rs`, which
//! runs the MONAI fixtures through the fused path); [`generic_only`] runs code with the fused
//! kernels switched off, to compare or to rule them out.
//!
//! The data checks of `check_inputs` (finite input and dense target, class indices in range)
//! are made by the fused pass itself for `DiceLoss`, `GeneralizedDiceLoss` and `TverskyLoss`,
//! on the data it reads anyway; only when it reports bad data (or does not run after all) do
//! the burn-ops checks run, to panic with their message. `DiceCELoss` and `DiceFocalLoss`,
//! whose cross-entropy reads the data first, check before, reading the raw data in one
//! vectorized pass instead of a burn comparison, a reduction and a read-back.
//!
//! burn-ndarray 0.21 copies the data on every `reshape`; flattening the input, the target and
//! (on the way back) the gradient to `[batch, class, pixels]` therefore cost three copies of the
//! input. burn-dice re-views a contiguous ndarray buffer instead, with its own autodiff node.
//!
//! Memory: the forward pass allocates the `[3, batch, class]` result and, when the input is
//! tracked, the probabilities (the input's size), which become the input's gradient (which
//! autodiff needs anyway): one buffer of the input's size in all.

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

/// Whether the fused statistics may run for tensors of backend `B` on this thread: the
/// backend is burn-ndarray or burn-flex (plain or under `Autodiff`) and [`fused_enabled`].
/// Whether they do run also depends on the tensors (`f32`, a target without gradient).
pub(crate) fn may_fuse<B: Backend>() -> bool {
    if !fused_enabled() {
        return false;
    }
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::may_fuse::<B>()
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        false
    }
}

/// The result of the fused statistics.
pub(crate) struct FusedStats<B: Backend> {
    /// The three `[batch, class]` sums: intersection, prediction, target.
    pub sums: [Tensor<B, 2>; 3],
    /// Whether the input and a dense target are finite and class indices in range: the data
    /// checks of `check_inputs`, from the same pass (see [`may_fuse`]).
    pub valid_data: bool,
}

/// The statistics of `input` (`[batch, class, pixels]`, raw) after `activation`, if a fused
/// kernel handles this backend and these tensors; `None` means: use the generic path.
pub(crate) fn class_stats<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    activation: Activation,
    squared_pred: bool,
) -> Option<FusedStats<B>> {
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

/// The options of the cross-entropy term of `DiceCELoss` (see [`kernel::ce`]).
#[derive(Debug, Clone)]
pub(crate) struct CeOptions {
    /// One weight per class, or none.
    pub class_weight: Option<Vec<f32>>,
    /// The weight of the positive term (single channel).
    pub pos_weight: f32,
    pub label_smoothing: f32,
}

/// Per sample, the sum of the pixel cross-entropies and the sum of their weights (`[batch]`
/// each), from one fused pass with a custom backward, if a kernel handles this backend and
/// these tensors; `None`: use the generic path.
pub(crate) fn ce_sums<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    options: &CeOptions,
) -> Option<[Tensor<B, 1>; 2]> {
    if !fused_enabled() {
        return None;
    }
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::ce_sums(input, target, options)
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = (input, target, options);
        None
    }
}

/// Per (sample, class), the focal term of `DiceFocalLoss` summed over the pixels that count
/// (`[batch, class]`; see [`kernel::focal`]), from one fused pass with a custom backward, if a
/// kernel handles this backend and these tensors; `None`: use the generic path.
pub(crate) fn focal_sums<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    gamma: f32,
    alpha: Option<f32>,
) -> Option<Tensor<B, 2>> {
    if !fused_enabled() {
        return None;
    }
    #[cfg(feature = "cpu-kernels")]
    {
        cpu::focal_sums(input, target, gamma, alpha)
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        let _ = (input, target, gamma, alpha);
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
