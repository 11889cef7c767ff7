//! The one place that chooses what computes the family's terms on a device.
//!
//! Every loss of the family starts from per-(sample, class) statistics of its input (the
//! activation, then `I = Σ p·t`, `P = Σ p`, `T = Σ t`, or the forms of
//! `burn_dice_core::Terms` with `squared_pred` or `soft_label`); `DiceCELoss` and
//! `DiceFocalLoss` add a per-pixel term (cross-entropy, focal). What computes them is chosen at
//! run time from the input's [`Device`] and [`DType`]:
//!
//! | device (plain or `.autodiff()`) | statistics, CE and focal terms | data checks of `check_inputs` |
//! |---|---|---|
//! | burn-flex (`Device::flex()`, feature `flex`, on by default), `f32` input, `f32` dense target and mask or `i64`/`i32` class indices | [`KernelPath::Cpu`]: the fused CPU kernels of the burn-free core (`burn_dice_core::cpu`), through the backend extension of `cpu.rs` | in the kernel pass, on the host: a failure panics in the call |
//! | burn-wgpu (`Device::wgpu(..)`, feature `wgpu`; with or without burn-fusion), `f32` input, `f32` dense target, mask and `ce_weight` or `i64`/`i32` class indices | [`KernelPath::Cube`]: the fused CubeCL kernels (`cube/`), through the backend extensions of `cube/mod.rs` | in the kernel pass, on the device: the verdict is read back without waiting (see `crate::checks`) |
//! | every other device or element type (NdArray, LibTorch, Remote, the other CubeCL runtimes: CUDA, ROCm, Metal, cubecl-cpu; `f16`/`bf16`/`f64`), a target or mask that requires a gradient | [`KernelPath::Generic`]: burn ops (`generic.rs`) | burn ops; read back at once on the CPU, without waiting on a device backend (see `crate::checks`) |
//!
//! The kernels are burn 0.22 backend extensions (`#[backend_extension]`), routed by burn's
//! dispatch to `Flex` and `Autodiff<Flex>` (`cpu.rs`), and to `CubeBackend`,
//! `Fusion<CubeBackend>` and `Autodiff` of them (`cube/mod.rs`), whatever the checkpointing
//! strategy. Burn panics when an extension is called for a backend it does not list, so
//! [`path`] checks the device and the element types first and sends everything else to the
//! generic path. The CubeCL kernels are generic over the runtime, but are taken on wgpu only:
//! it is the runtime they are tested on (lavapipe in CI, an NVIDIA GPU through Vulkan).
//!
//! The kernel computes, in one pass over the input, the activation and the sums of every class
//! of every sample (and the cross-entropy or focal term of `DiceCELoss` / `DiceFocalLoss`),
//! and its autodiff node writes the input's gradient in one more pass from the closed form
//! `∂L/∂x = act'(x) · (∂L/∂I · t + ∂L/∂P · ∂P/∂p)` (see `burn-dice-core/src/cpu/stats.rs`). The
//! CPU kernel stores the probabilities for the backward pass, which become the gradient's
//! buffer; the CubeCL one recomputes them (see `cube/stats.rs`). The generic path is the
//! readable reference the kernels are tested against.
//!
//! Everything after the statistics (smoothing, weights, each loss's formula, the reduction) is
//! burn ops on `[batch, class]` tensors on every path, so every option of every loss is
//! covered by every path, and its gradient comes from autodiff. The sums and everything
//! computed from them are `f32` for half-precision inputs (`numerics::compute_dtype`); the
//! loss comes back in the input's type.
//!
//! [`path`] tells which one runs for a device and element type; [`generic_only`] switches the
//! kernels off on a thread (to compare, or to rule them out).

#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(any(feature = "flex", feature = "wgpu"))]
mod ext;
pub(crate) mod generic;
pub(crate) mod input;
#[cfg(all(test, feature = "flex"))]
mod tests;

use std::cell::Cell;

use burn::tensor::{DType, Device, Tensor};

use crate::activation::Activation;
use input::{Extra, ExtraSums, PreparedTarget, Stats, Terms, Verdict};

thread_local! {
    static GENERIC_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the kernels switched off on this thread: every loss takes the generic burn-ops
/// path inside it (to compare a kernel with the reference, or to rule the kernels out).
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

/// What computes the statistics (and the cross-entropy and focal terms) on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelPath {
    /// burn ops: every device and element type.
    Generic,
    /// The fused CPU kernels (burn-flex, `f32`).
    Cpu,
    /// The fused CubeCL kernels (burn-wgpu, `f32`).
    Cube,
}

/// The path a loss takes for an input on `device` of element type `dtype` when computed now
/// on this thread.
pub fn path(device: &Device, dtype: DType) -> KernelPath {
    if GENERIC_ONLY.with(|g| g.get()) || dtype != DType::F32 {
        return KernelPath::Generic;
    }
    if on_flex(device) {
        KernelPath::Cpu
    } else if on_cube(device) {
        KernelPath::Cube
    } else {
        KernelPath::Generic
    }
}

/// Whether `device` is a device the CubeCL kernels run on (plain or with autodiff; feature
/// `wgpu`): a burn-wgpu device.
fn on_cube(device: &Device) -> bool {
    #[cfg(feature = "wgpu")]
    {
        cube::cube_device(device).is_some()
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = device;
        false
    }
}

#[cfg(feature = "wgpu")]
pub use cube::{launches, plane_reductions, set_plane_reductions};

/// Whether `device` is a burn-flex device (plain or with autodiff) and the Flex kernels are
/// compiled in (feature `flex`).
fn on_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        use burn::backend::DispatchDevice;
        matches!(
            device.clone().without_autodiff().as_dispatch(),
            DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device`'s read-backs are there at once: `Some(true)` for burn-flex, `Some(false)`
/// for the devices of the CubeCL kernels (a GPU queue, even where the adapter is a CPU, as
/// lavapipe, whose read-backs may be done by the time they are first polled), `None` for any
/// other device (the data checks then learn it from its first read-back).
pub(crate) fn reads_back_at_once(device: &Device) -> Option<bool> {
    if on_flex(device) {
        Some(true)
    } else if on_cube(device) {
        Some(false)
    } else {
        None
    }
}

/// Whether the statistics pass on `device` for `dtype` checks the data it reads, so that the
/// losses whose first pass it is can leave the data checks to it.
pub(crate) fn checks_in_pass(device: &Device, dtype: DType) -> bool {
    path(device, dtype) != KernelPath::Generic
}

/// Whether a failed check of the statistics pass on `device` is known on the host at once (a
/// CPU kernel), so that the data checks can be run again with burn ops for the exact message.
/// Asked only where the pass checks the data (`checks_in_pass`).
pub(crate) fn checks_on_host(device: &Device) -> bool {
    reads_back_at_once(device) == Some(true)
}

/// The three `[batch, class]` sums of `input` (`[batch, class, pixels]`, raw) after
/// `activation` against `target`, of the per-pixel `terms`; with `check`, a kernel also checks
/// the data it reads (the generic path never does: its verdict is [`Verdict::Unchecked`]).
/// A kernel computes the `extra` term in the same pass ([`Stats::extra`]); on the generic path
/// [`extra_sums`] computes it once the verdict is settled.
pub(crate) fn class_stats(
    input: Tensor<3>,
    target: &PreparedTarget,
    activation: Activation,
    terms: Terms,
    check: bool,
    extra: &Extra,
    loss: &str,
) -> Stats {
    // The CPU kernels always check the data they read (at no cost): `check` is for kernels
    // whose checks cost a read-back (the CubeCL ones).
    let _ = (check, extra);
    let kernel = match path(&input.device(), input.dtype()) {
        KernelPath::Generic => None,
        #[cfg(feature = "flex")]
        KernelPath::Cpu => cpu::class_stats(&input, target, activation, terms, extra),
        #[cfg(feature = "wgpu")]
        KernelPath::Cube => cube::class_stats(&input, target, activation, terms, check, extra),
        #[allow(unreachable_patterns)]
        _ => unreachable!("`path` chooses the paths that are compiled in"),
    };
    if let Some(stats) = kernel {
        return stats;
    }
    Stats {
        sums: generic::class_stats(input, target, activation, terms, loss),
        verdict: Verdict::Unchecked,
        extra: None,
    }
}

/// Splits a kernel's `[3 + rows, batch, class]` output into the three statistics and the sums
/// of the `extra` term.
#[cfg_attr(not(any(feature = "flex", feature = "wgpu")), allow(dead_code))]
fn unstack(stacked: Tensor<3>, extra: &Extra) -> ([Tensor<2>; 3], ExtraSums) {
    let [_, b, c] = stacked.dims();
    let row = |r: usize| stacked.clone().narrow(0, r, 1).reshape([b, c]);
    let extra = match extra {
        Extra::None => ExtraSums::None,
        Extra::Ce(_) => ExtraSums::Ce([3, 4].map(|r| row(r).sum_dim(1).reshape([b]))),
        Extra::Focal(_) => ExtraSums::Focal(row(3)),
    };
    ([0, 1, 2].map(row), extra)
}

/// The sums of the `extra` term with burn ops, in a pass of their own: for the generic path.
pub(crate) fn extra_sums(input: Tensor<3>, target: &PreparedTarget, extra: &Extra) -> ExtraSums {
    match extra {
        Extra::None => ExtraSums::None,
        Extra::Ce(options) => ExtraSums::Ce(generic::ce_sums(input, target, options)),
        Extra::Focal(options) => ExtraSums::Focal(generic::focal_sums(input, target, *options)),
    }
}
