//! Per-(sample, class) sums shared by every loss of the family.
//!
//! For probabilities `p` and target `t` (both `[batch, class, pixels]`, ignored pixels removed)
//! the statistics are, summed over the pixels (and over the batch with `batch = true`):
//! - intersection `I = Σ p·t`,
//! - prediction mass `P = Σ p` (`Σ p²` with `squared_pred`),
//! - target mass `T = Σ t` (`Σ t²` with `squared_pred`);
//!
//! with `soft_label` (and without `squared_pred`) the L1 forms of Wang & Blaschko (MICCAI 2023),
//! as MONAI 1.6's `compute_tp_fp_fn`: `I = Σ (|p| + |t| − |p − t|) / 2`, `P = Σ |p|`,
//! `T = Σ |t|` (see `crate::kernels::input::Terms`).
//!
//! False positives and negatives follow as `P − I` and `T − I`. [`crate::kernels`] chooses what
//! computes them on each backend (fused CPU or GPU kernels, or burn ops).

use burn::tensor::{backend::Backend, Tensor};

use crate::activation::Activation;
use crate::checks::{report_verdict, warn_single_channel_background};
use crate::kernels::input::{Extra, ExtraSums, Terms, Verdict};
use crate::kernels::{self};
use crate::replicas::{sum_across, ReplicaGroup};
use crate::target::Prepared;

/// Over what the statistics are summed before the ratio.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pooling<'a> {
    /// Each sample on its own (`batch = false`): `[batch, class]`.
    Sample,
    /// The batch (`batch = true`): `[1, class]`.
    Batch,
    /// The batches of every replica of the group (`batch = true` with a replica group).
    Replicas(&'a ReplicaGroup),
}

impl<'a> Pooling<'a> {
    /// The pooling of a loss's `batch` flag and replica group (which needs `batch`).
    pub fn new(batch: bool, replicas: Option<&'a ReplicaGroup>) -> Self {
        match (batch, replicas) {
            (false, _) => Self::Sample,
            (true, None) => Self::Batch,
            (true, Some(group)) => Self::Replicas(group),
        }
    }
}

/// The three sums, each `[batch, class]` (`[1, class]` when summed over the batch).
#[derive(Debug, Clone)]
pub(crate) struct ClassStats<B: Backend> {
    /// `Σ p·t`.
    pub intersection: Tensor<B, 2>,
    /// `Σ p` or `Σ p²`.
    pub pred: Tensor<B, 2>,
    /// `Σ t` or `Σ t²`.
    pub target: Tensor<B, 2>,
}

impl<B: Backend> ClassStats<B> {
    /// Sums the tables over the batch (`[1, class]`), and then across the replicas,
    /// as `pooling` says.
    fn pooled(self, pooling: Pooling<'_>, loss: &str) -> Self {
        match pooling {
            Pooling::Sample => self,
            Pooling::Batch => self.map(|t| t.sum_dim(0)),
            Pooling::Replicas(group) => {
                // One rendezvous a call: the three `[1, class]` rows stacked.
                let Self {
                    intersection,
                    pred,
                    target,
                } = self.map(|t| t.sum_dim(0));
                let global = sum_across(
                    loss,
                    group,
                    Tensor::cat(vec![intersection, pred, target], 0),
                );
                let row = |i| global.clone().narrow(0, i, 1);
                Self {
                    intersection: row(0),
                    pred: row(1),
                    target: row(2),
                }
            }
        }
    }

    /// The common first half of every Dice-family loss: the activation of the prepared input,
    /// the sums against its target, and the background dropped unless `include_background`.
    ///
    /// The data checks left to the statistics pass ([`Prepared::deferred`]) are settled here:
    /// by the kernel's verdict when it made them, else by burn ops.
    pub fn of_prepared(
        loss: &'static str,
        prepared: Prepared<B>,
        activation: Activation,
        terms: Terms,
        pooling: Pooling<'_>,
        include_background: bool,
    ) -> Self {
        let extra = Extra::None;
        Self::of_prepared_with(
            loss,
            prepared,
            activation,
            terms,
            pooling,
            include_background,
            &extra,
        )
        .0
    }

    /// [`ClassStats::of_prepared`], with the sums of the `extra` term of every sample and
    /// class (all of them: `include_background` and the pooling apply to the statistics only).
    /// The kernels (CPU and CubeCL) compute them in the statistics' pass; on the generic path a
    /// pass of their own follows once the data checks are settled.
    pub fn of_prepared_with(
        loss: &'static str,
        prepared: Prepared<B>,
        activation: Activation,
        terms: Terms,
        pooling: Pooling<'_>,
        include_background: bool,
        extra: &Extra<B>,
    ) -> (Self, ExtraSums<B>) {
        activation.check(prepared.channels(), loss);
        let Prepared {
            input,
            target,
            deferred,
        } = prepared;
        let check = deferred.is_some();
        let stats = kernels::class_stats(
            input.clone(),
            &target,
            activation,
            terms,
            check,
            extra,
            loss,
        );
        if let Some(checks) = deferred {
            match stats.verdict {
                Verdict::Host(true) => {}
                // Data that failed the kernel's checks, or that no kernel checked, goes to the
                // burn-ops checks, which panic with the message.
                Verdict::Host(false) | Verdict::Unchecked => checks.run(),
                Verdict::Device(flags) => report_verdict(loss, flags, checks.describe()),
            }
        }
        let extra = match stats.extra {
            Some(sums) => sums,
            None => kernels::extra_sums(input, &target, extra),
        };
        let [intersection, pred, target] = stats.sums;
        let stats = Self {
            intersection,
            pred,
            target,
        }
        .pooled(pooling, loss)
        .keep_classes(include_background, loss);
        (stats, extra)
    }

    /// Applies `f` to each of the three sums.
    pub fn map(self, f: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>) -> Self {
        Self {
            intersection: f(self.intersection),
            pred: f(self.pred),
            target: f(self.target),
        }
    }

    /// Drops class 0 (the background).
    pub fn without_background(self) -> Self {
        let classes = self.pred.dims()[1];
        self.map(|t| t.narrow(1, 1, classes - 1))
    }

    /// Drops the background unless `include_background`; on a single channel `false` is
    /// ignored with a warning, as in MONAI.
    pub fn keep_classes(self, include_background: bool, loss: &str) -> Self {
        if include_background {
            return self;
        }
        if self.pred.dims()[1] == 1 {
            warn_single_channel_background(loss);
            self
        } else {
            self.without_background()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::generic;
    use crate::kernels::input::PreparedTarget;
    use crate::target::prepare_target;
    use crate::tests::{device, TestBackend};
    use burn::tensor::{Int, TensorData, Tolerance};

    /// The generic sums of probabilities (no activation).
    fn compute(
        probs: Tensor<B, 3>,
        target: PreparedTarget<B>,
        squared_pred: bool,
        batch: bool,
    ) -> ClassStats<B> {
        let terms = Terms::new(squared_pred, false);
        let [intersection, pred, target] =
            generic::class_stats(probs, &target, Activation::None, terms, "t");
        ClassStats {
            intersection,
            pred,
            target,
        }
        .pooled(Pooling::new(batch, None), "t")
    }

    type B = TestBackend;

    fn probs() -> Tensor<B, 3> {
        // [batch 1, class 3, pixels 4]
        Tensor::from_floats(
            [[
                [0.7, 0.1, 0.2, 0.5],
                [0.2, 0.8, 0.1, 0.25],
                [0.1, 0.1, 0.7, 0.25],
            ]],
            &device(),
        )
    }

    fn labels() -> Tensor<B, 3, Int> {
        Tensor::from_ints([[[0, 1, 2, 9]]], &device())
    }

    fn onehot() -> Tensor<B, 3> {
        Tensor::from_floats(
            [[
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ]],
            &device(),
        )
    }

    fn close(t: Tensor<B, 2>, expected: [[f32; 3]; 1]) {
        t.into_data()
            .assert_approx_eq::<f32>(&TensorData::from(expected), Tolerance::default());
    }

    #[test]
    fn index_and_dense_targets_agree() {
        // The 4th pixel is ignored: drop it from the dense computation by hand.
        let dense = prepare_target(
            "t",
            &[1, 3, 3],
            onehot().narrow(2, 0, 3).into(),
            None,
            None,
            false,
        );
        let a = compute(probs().narrow(2, 0, 3), dense, false, false);
        let idx = prepare_target("t", &[1, 3, 4], labels().into(), Some(9), None, false);
        let b = compute(probs(), idx, false, false);
        close(a.intersection.clone(), [[0.7, 0.8, 0.7]]);
        close(a.pred.clone(), [[1.0, 1.1, 0.9]]);
        close(a.target.clone(), [[1.0, 1.0, 1.0]]);
        close(b.intersection, [[0.7, 0.8, 0.7]]);
        close(b.pred, [[1.0, 1.1, 0.9]]);
        close(b.target, [[1.0, 1.0, 1.0]]);
    }

    #[test]
    fn squared_pred_and_batch() {
        let p = Tensor::cat(vec![probs(), probs()], 0);
        let t = Tensor::cat(vec![onehot(), onehot()], 0);
        let prepared = prepare_target("t", &[2, 3, 4], t.into(), None, None, false);
        let s = compute(p, prepared, true, true).without_background();
        close2(
            s.pred,
            [[
                2.0 * (0.04 + 0.64 + 0.01 + 0.0625),
                2.0 * (0.01 + 0.01 + 0.49 + 0.0625),
            ]],
        );
        close2(s.intersection, [[1.6, 1.4]]);
        close2(s.target, [[2.0, 2.0]]);
    }

    fn close2(t: Tensor<B, 2>, expected: [[f32; 2]; 1]) {
        t.into_data()
            .assert_approx_eq::<f32>(&TensorData::from(expected), Tolerance::default());
    }
}
