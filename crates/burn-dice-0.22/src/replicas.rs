//! Batch Dice under data parallelism: the statistics of every replica summed before the ratio.
//!
//! With `batch = true` a loss sums `I`, `P` and `T` over the whole batch before the ratio
//! (nnU-Net's "batch Dice"). Under data parallelism each replica sees only its share of the
//! batch, and would compute a per-replica Dice instead: another loss, with other gradients on
//! the small or empty structures batch Dice is for. Give the loss of every replica a clone of
//! one [`ReplicaGroup`] (`with_replicas` on each loss) and the `[1, class]` statistics are summed
//! across the replicas before the ratio, as nnU-Net v2 does across DDP ranks
//! (`nnunetv2/training/loss/dice.py`, `ddp=True`):
//!
//! - every replica gets the **global** batch Dice (Tversky's `FP = P − I` and `FN = T − I`,
//!   and GeneralizedDice's weights from the global `T`, follow from the summed sums);
//! - the gradient is exact: the summed statistics enter the ratio as the straight-through sum
//!   `s = k·local + (global − k·local).detach()`, so a replica's input gradient is the one-device
//!   gradient of the whole batch's loss restricted to its samples, times
//!   `k = `[`ReplicaGroup::gradient_scale`]. With the [`GradientCombine`] that matches the
//!   training loop (burn-train's multi-device strategy adds the replicas' gradients: `Sum`;
//!   a loop that divides each replica's loss by the number of replicas: `Mean`), the combined
//!   gradient is one device's gradient of the whole batch;
//! - it works on every backend and every path (burn ops, CPU kernels, CubeCL kernels): the sum
//!   is taken on the `[1, class]` statistics after them, read back to the host (one transfer of
//!   `3 × class` values a call) and summed there;
//! - with `batch = false` the group changes nothing (per-sample Dice needs no other replica),
//!   and `DiceCELoss` / `DiceFocalLoss` sum their Dice part only (the cross-entropy and focal
//!   terms are means over pixels, which the gradient combination already handles).
//!
//! The group is a host-side rendezvous for replicas that are threads of one process. Its rule
//! is **whole steps only**: every replica makes the same loss calls, step by step. A replica
//! that sits out a step leaves the others waiting; after [`ReplicaGroup::timeout`] they fail
//! with a message naming the group and the step (and every later call fails at once), never a
//! hang. Split the data so that every replica has the same number of batches.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use burn_dice::{DiceLossConfig, ReplicaGroup};
//! let group = ReplicaGroup::new("train", 2);
//! let config = DiceLossConfig::new().with_batch(true);
//! std::thread::scope(|scope| {
//!     for _ in 0..2 {
//!         let device = Device::flex();
//!         let loss = config.init(&device).with_replicas(group.clone());
//!         scope.spawn(move || {
//!             let probs = Tensor::<3>::ones([1, 1, 4], &device);
//!             // Both replicas get the Dice of the batch of 2.
//!             let value: f32 = loss.forward(probs.clone(), probs).into_scalar();
//!             assert!(value.abs() < 1e-6);
//!         });
//!     }
//! });
//! ```

use burn::tensor::{Tensor, TensorData};

pub use burn_dice_core::replicas::{
    GradientCombine, ProcessSum, ReplicaError, ReplicaErrorKind, ReplicaGroup,
};

/// Sums `local` (`[rows, class]` statistics, stacked) across the replicas of `group`: the
/// value is the global sum, the gradient flows to `local` scaled by the group's
/// [`ReplicaGroup::gradient_scale`].
///
/// # Panics
/// With the group's error (a replica missing at this step, a replica with another number of
/// classes, or a group broken by an earlier failure), prefixed by `loss`.
pub(crate) fn sum_across(loss: &str, group: &ReplicaGroup, local: Tensor<2>) -> Tensor<2> {
    let dims = local.dims();
    let device = local.device();
    let dtype = local.dtype();
    let values = local
        .clone()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("f64 data after convert");
    let global = group
        .all_reduce(&values)
        .unwrap_or_else(|err| panic!("{loss}: {err}"));
    let global = Tensor::<2>::from_data(TensorData::new(global, dims), (&device, dtype));
    let scale = group.gradient_scale();
    let scaled = if scale == 1.0 {
        local
    } else {
        local.mul_scalar(scale)
    };
    scaled.clone() + (global - scaled).detach()
}
