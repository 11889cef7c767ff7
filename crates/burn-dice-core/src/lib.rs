//! The burn-free core of [burn-dice](https://crates.io/crates/burn-dice): what both of its
//! release lines (burn-dice 0.1 on burn 0.21, burn-dice 0.2 on burn 0.22) compute without
//! burn, written once.
//!
//! - [`Terms`]: the per-pixel terms of the three statistics `I = Σ p·t`, `P`, `T` of Milletari
//!   et al., "V-Net" (2016), in the forms MONAI's `compute_tp_fp_fn` sums (`squared_pred`,
//!   `soft_label`).
//! - [`cpu`]: the fused CPU kernels on slices: the per-(sample, class) statistics with the
//!   activation, the cross-entropy or focal term of `DiceCELoss` / `DiceFocalLoss` in the same
//!   pass, the data checks, and their backward passes; parallel on rayon, written against
//!   explicit vectors (macerator) and compiled per instruction set (AVX-512, AVX2 + FMA,
//!   SSE4.2, NEON, scalar; chosen at run time, capped by `BURN_DICE_ISA`). Feature `cpu` (on in
//!   burn-dice with its CPU backends' kernels).
//! - [`metric`]: the hard Dice metric's host arithmetic (a score from counts, the empty-class
//!   policy, [`metric::DiceTotals`] for the global Dice of an epoch).
//! - [`replicas`]: the host-side rendezvous that sums the batch statistics of data-parallel
//!   replicas before the ratio (burn-dice's `ReplicaGroup`).
//! - [`processes`]: the sums across the processes of a data-parallel run (over TCP), for a
//!   `ReplicaGroup` that spans processes and for the gradients.
//!
//! Each line of burn-dice reads its backend's tensors as slices, calls these kernels, and wraps
//! the result back into tensors with a custom backward; this crate has no public API promise of
//! its own beyond what those lines need.

pub mod checks;
#[cfg(feature = "cpu")]
pub mod cpu;
pub mod gpu;
pub mod metric;
pub mod processes;
pub mod replicas;
mod terms;
#[cfg(feature = "testing")]
pub mod testing;

pub use terms::Terms;

/// The activation a kernel applies to the input before it takes the statistics (each line's
/// public `Activation` maps onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// The input is used as is.
    None,
    /// Element-wise logistic sigmoid.
    Sigmoid,
    /// Softmax over the class dimension.
    Softmax,
}
