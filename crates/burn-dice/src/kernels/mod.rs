//! The one place that chooses what computes the family's terms on a backend.
//!
//! Every loss of the family starts from per-(sample, class) statistics of its input (the
//! activation, then `I = Σ p·t`, `P = Σ p`, `T = Σ t`, or the forms of
//! `burn_dice_core::Terms` with `squared_pred` or `soft_label`); `DiceCELoss` and `DiceFocalLoss` add a
//! per-pixel term (cross-entropy, focal). Three implementations compute them, siblings below
//! this module, and nothing beneath it calls back up into the losses:
//!
//! | backend `B` (plain or under `Autodiff`) | statistics, CE and focal terms | data checks of `check_inputs` |
//! |---|---|---|
//! | `NdArray<f32>` (feature `ndarray`), `Flex` (feature `flex`); both default | [`KernelPath::Cpu`]: fused CPU kernels (`burn_dice_core::cpu`, read through `cpu/`) | in the kernel pass, on the host: a failure panics in the call |
//! | burn-wgpu's `Wgpu<f32>` (`Fusion<CubeBackend<WgpuRuntime, f32, i32, u32>>`) and `CubeBackend<WgpuRuntime, f32, i32, u32>` (feature `wgpu`); the same on CUDA (feature `cuda`) | [`KernelPath::Cube`]: fused CubeCL kernels (`cube/`) | in the kernel pass, on the device: read back without waiting (see below) |
//! | every other backend or element type, checkpointing other than burn's default, a target or mask that requires a gradient | [`KernelPath::Generic`]: burn ops (`generic.rs`) | burn ops, read back as on the device |
//!
//! Half precision (`f16`, `bf16`): the CubeCL rows also cover `Wgpu<f16>`, `Cuda<f16>` and
//! `Cuda<bf16>`, and every CubeCL backend reads `f16`/`bf16` tensors as they are (with a target
//! and mask of the input's type; otherwise the generic path). The CPU kernels read `f32` only, so
//! half-precision tensors on burn-flex take the generic path. Whatever the path, the sums and
//! everything computed from them are `f32` (`numerics::compute_dtype`; the kernels' outputs are
//! `f32`, the generic path widens its input), the gradient and the loss come back in the input's
//! type. `Wgpu<bf16>` is left to burn ops: WGSL has no `bf16` arithmetic.
//!
//! [`path`] tells which one runs for a backend; [`generic_only`] switches the kernels off on a
//! thread (to compare, or to rule them out). Everything after the statistics (smoothing,
//! weights, each loss's formula, the reduction) is burn ops on `[batch, class]` tensors on
//! every path, so every option of every loss is covered by every path, and its gradient comes
//! from autodiff.
//!
//! # The kernels
//! Both kernel families compute, in one pass over the input, the activation and the sums of
//! every class of every sample, and register a custom backward (burn-autodiff's `Backward`) that
//! writes the input's gradient in one more pass from the closed form
//! `∂L/∂x = act'(x) · (∂L/∂I · t + ∂L/∂P · ∂P/∂p)` (see `burn-dice-core/src/cpu/stats.rs` for the derivation).
//! The CPU kernels store the probabilities for the backward pass (they become the gradient's
//! buffer); the CubeCL kernels recompute them, which costs arithmetic a GPU has to spare and
//! saves a write of the input's size. The cross-entropy and focal terms of `DiceCELoss` and
//! `DiceFocalLoss`: the CubeCL kernels sum them in the statistics' pass (more rows of its
//! output) and write the gradient of both terms in one backward pass, so those losses read the
//! data once forward and once backward (2 launches forward, 1 backward, as every loss). The CPU
//! kernels do the same: the term reads each block of the statistics' pass while it is in the
//! cache, and its gradient is added to the statistics' in their one backward pass
//! (`burn-dice-core/src/cpu/stats.rs`, `PixelTerm`). The generic path is the readable reference every kernel is
//! tested against.
//!
//! Both families run on one skeleton (`backend.rs`): an operation says how it computes its
//! outputs and its input's gradient on one concrete backend (a `FusedOp`), and `backend::run`
//! does the rest for every loss: the run-time backend check (`B` is that backend, plain or
//! under `Autodiff`), the move into its primitives, the autodiff node with its backward, and
//! the outputs back as `B`'s. Below it, the CPU kernels work on slices (the burn-free core
//! that both release lines share, `burn_dice_core::cpu`: `stats.rs`, `ce.rs`, `focal.rs` on
//! `common.rs`, `jobs.rs`, `isa.rs`; `cpu/` here reads the backends' tensors as slices for
//! them) and the CubeCL kernels on device
//! buffers (`cube/`: `stats.rs`, `ce.rs`, `focal.rs` on `common.rs`). The losses hand the
//! flattened input and target to `class_stats` once (on the generic path, to `extra_sums`
//! too); nothing below this module calls back into the losses, the targets or the checks.
//!
//! # Data checks
//! With `check_inputs` the input and a dense target must be finite and class indices in range.
//! The kernels check the data they read anyway and report a verdict: on the CPU it is known at
//! once, and a failure panics in the call that saw the data. On a GPU, reading a verdict back
//! at once would make every call wait for the device to finish all the work queued so far; so
//! there (and on the generic path of any device backend) the first checked call of each thread
//! waits for its verdict, and later calls leave theirs on the device, to be read back
//! [`crate::checks::CHECK_BATCH`] at a time without waiting: a failure then panics at a later
//! checked call of any loss on the same thread (the message names the call that saw the bad
//! data), or at [`crate::wait_for_checks`]. See `crate::checks`.
//!
//! # Counting
//! With the CubeCL kernels, `launches` counts the kernels a thread has launched (a test holds
//! each loss's launches per call), and [`crate::checks::readbacks`] the verdicts' read-backs.

#[cfg(any(feature = "ndarray", feature = "flex", feature = "cube-kernels"))]
mod backend;
#[cfg(any(feature = "ndarray", feature = "flex"))]
mod cpu;
#[cfg(feature = "cube-kernels")]
mod cube;
pub(crate) mod generic;
pub(crate) mod input;
// Helpers of the kernels' tests: those of the CPU kernels run with both CPU backends.
#[cfg(all(
    test,
    any(all(feature = "ndarray", feature = "flex"), feature = "cube-kernels")
))]
pub(crate) mod tests;

#[cfg(feature = "wgpu")]
pub use cube::wgpu_plane_reductions;
#[cfg(feature = "cube-kernels")]
pub use cube::{launches, set_plane_reductions};

use std::cell::Cell;

use burn::tensor::{backend::Backend, DType, Tensor};

use crate::activation::Activation;
use input::{Extra, ExtraSums, PreparedTarget, Stats, Terms, Verdict};

thread_local! {
    static GENERIC_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the CPU and GPU kernels switched off on this thread: every loss computed inside
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

/// Whether a loss computed now on this thread may use a kernel: no [`generic_only`] call is
/// running (and the crate was built with a kernel feature).
pub fn fused_enabled() -> bool {
    cfg!(any(
        feature = "ndarray",
        feature = "flex",
        feature = "cube-kernels"
    )) && !GENERIC_ONLY.with(|g| g.get())
}

/// What computes the statistics (and the cross-entropy and focal terms) of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// burn ops: every backend.
    Generic,
    /// The fused CPU kernels (burn-ndarray and burn-flex, `f32`).
    Cpu,
    /// The fused CubeCL kernels (burn-wgpu, and burn-cuda with the `cuda` feature; `f32`).
    Cube,
}

/// The path a loss of backend `B` takes when computed now on this thread, for inputs the kernels
/// take (a target or mask that requires a gradient takes the generic path on every backend).
pub fn path<B: Backend>() -> KernelPath {
    if !fused_enabled() {
        return KernelPath::Generic;
    }
    #[cfg(any(feature = "ndarray", feature = "flex"))]
    if cpu::handles::<B>() {
        return KernelPath::Cpu;
    }
    #[cfg(feature = "cube-kernels")]
    if cube::handles::<B>() {
        return KernelPath::Cube;
    }
    KernelPath::Generic
}

/// Whether backend `B`'s read-backs are there at once: `Some(true)` for the CPU backends the
/// kernels run on, `Some(false)` for the CubeCL backends they run on, `None` for a backend
/// they do not know (the data checks then learn it from the first read-back).
pub(crate) fn reads_back_at_once<B: Backend>() -> Option<bool> {
    #[cfg(any(feature = "ndarray", feature = "flex"))]
    if cpu::handles::<B>() {
        return Some(true);
    }
    #[cfg(feature = "cube-kernels")]
    if cube::handles::<B>() {
        return Some(false);
    }
    None
}

/// Whether the statistics pass of backend `B` checks the data it reads, so that the losses
/// whose first pass it is can leave the data checks to it.
///
/// The backend type decides here; `device` and `dtype` give the call the shape of the 0.22
/// line's, which chooses by run-time device and float type (its code is generated from this).
pub(crate) fn checks_in_pass<B: Backend>(device: &B::Device, dtype: DType) -> bool {
    let _ = (device, dtype);
    path::<B>() != KernelPath::Generic
}

/// Whether a failed check of the statistics pass of backend `B` is known on the host at once
/// (the CPU kernels), so that the data checks can be run again with burn ops for the exact
/// message: then even the checks whose message needs the offending value (the 0/1 labels of a
/// single-channel input, read by the kernels as a dense target) can be left to the pass.
/// `device`: as in [`checks_in_pass`].
pub(crate) fn checks_on_host<B: Backend>(device: &B::Device) -> bool {
    let _ = device;
    path::<B>() == KernelPath::Cpu
}

/// The three `[batch, class]` sums of `input` (`[batch, class, pixels]`, raw) after
/// `activation` against `target`, of the per-pixel `terms`; with `check`, the kernels also
/// check the data they read (the generic path never does: its verdict is
/// [`Verdict::Unchecked`]). The kernels compute the `extra` term in the same pass
/// ([`Stats::extra`]); on the generic path [`extra_sums`] computes it once the verdict is
/// settled.
pub(crate) fn class_stats<B: Backend>(
    input: Tensor<B, 3>,
    target: &PreparedTarget<B>,
    activation: Activation,
    terms: Terms,
    check: bool,
    extra: &Extra<B>,
    loss: &str,
) -> Stats<B> {
    let _ = (check, extra);
    let kernel = match path::<B>() {
        #[cfg(any(feature = "ndarray", feature = "flex"))]
        KernelPath::Cpu => cpu::class_stats(&input, target, activation, terms, extra),
        #[cfg(feature = "cube-kernels")]
        KernelPath::Cube => cube::class_stats(&input, target, activation, terms, check, extra),
        _ => None,
    };
    kernel.unwrap_or_else(|| Stats {
        sums: generic::class_stats(input, target, activation, terms, loss),
        verdict: Verdict::Unchecked,
        extra: None,
    })
}

/// The sums of the `extra` term with burn ops, in a pass of their own: for the generic path
/// (every kernel sums the term in the statistics' pass; a call here on their backends is one
/// they declined).
pub(crate) fn extra_sums<B: Backend>(
    input: Tensor<B, 3>,
    target: &PreparedTarget<B>,
    extra: &Extra<B>,
) -> ExtraSums<B> {
    match extra {
        Extra::None => ExtraSums::None,
        Extra::Ce(options) => ExtraSums::Ce(generic::ce_sums(input, target, options)),
        Extra::Focal(options) => ExtraSums::Focal(generic::focal_sums(input, target, *options)),
    }
}
