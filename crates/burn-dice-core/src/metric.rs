//! The hard Dice coefficient's host arithmetic, shared by both lines' `DiceMetric`: the score of
//! one (sample or epoch, class) from its counts, and [`DiceTotals`], the per-class counts summed
//! over an epoch for nnU-Net's global ("pseudo") Dice, which replicas can sum through a
//! [`ReplicaGroup`].
//!
//! The counts of a class are `I = |A ∩ B|` (prediction and ground truth), `P = |A|` and
//! `T = |B|`; the score is `2I / (P + T)` (Dice 1945). There is no smoothing: a class absent
//! from the ground truth (`T = 0`) scores what the [`Empty`] policy says.

use crate::replicas::{ReplicaError, ReplicaGroup};

/// What a class absent from the ground truth (`T = 0`) scores. Each line's public
/// `EmptyPolicy` maps onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// NaN, skipped by the means (MONAI's `ignore_empty=True`, nnU-Net).
    NaN,
    /// 1 if nothing was predicted either, else 0 (MONAI's `ignore_empty=False`).
    One,
    /// 0.
    Zero,
}

/// The Dice score `2I / (P + T)` of one class from its counts, or what `empty` says when the
/// class is absent from the ground truth (`t == 0`).
pub fn dice_score(i: f64, p: f64, t: f64, empty: Empty) -> f64 {
    if t > 0.0 {
        2.0 * i / (p + t)
    } else {
        match empty {
            Empty::NaN => f64::NAN,
            Empty::Zero => 0.0,
            Empty::One => f64::from(u8::from(p == 0.0)),
        }
    }
}

/// The mean of the values that are not NaN; `None` when there are none.
pub fn nan_mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The first class a mean over classes keeps: 1 when the background (class 0) is left out of
/// an output with several classes, else 0 (a single channel is its own foreground).
pub fn first_kept_class(include_background: bool, classes: usize) -> usize {
    usize::from(!include_background && classes > 1)
}

/// The counts `I`, `P`, `T` of every class summed over many samples: over an epoch of
/// validation batches, and through a [`ReplicaGroup`] over the replicas that split it.
///
/// Their ratio per class is nnU-Net's global ("pseudo") Dice
/// (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`, `on_validation_epoch_end`: tp, fp and
/// fn summed over the validation steps, and over the DDP ranks, before
/// `2tp / (2tp + fp + fn)`; here `2I / (P + T)`, the same number). Unlike the mean of
/// per-sample scores it weighs every pixel alike, so a small structure counts little and a
/// sample without the class still counts its false positives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiceTotals {
    /// `Σ I` per class.
    pub intersection: Vec<f64>,
    /// `Σ P` per class.
    pub pred: Vec<f64>,
    /// `Σ T` per class.
    pub target: Vec<f64>,
}

impl DiceTotals {
    /// Zero counts for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            intersection: vec![0.0; classes],
            pred: vec![0.0; classes],
            target: vec![0.0; classes],
        }
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.pred.len()
    }

    /// Adds a `[samples, classes]` table of counts (row-major, as the lines'
    /// `DiceMetricInput`). Totals that are still empty (`DiceTotals::default()`) take the
    /// table's class count.
    ///
    /// # Panics
    /// When the tables are not `classes` wide or differ in length, or when `classes` differs
    /// from the totals' class count.
    pub fn add_table(
        &mut self,
        classes: usize,
        intersection: &[f64],
        pred: &[f64],
        target: &[f64],
    ) {
        if self.classes() == 0 {
            *self = Self::new(classes);
        }
        assert_eq!(
            classes,
            self.classes(),
            "DiceTotals::add_table: `classes` must be the totals' {} classes, got {classes}",
            self.classes()
        );
        let len = intersection.len();
        assert!(
            classes > 0 && len.is_multiple_of(classes) && pred.len() == len && target.len() == len,
            "DiceTotals::add_table: `intersection`, `pred` and `target` must each be \
             [samples, {classes}] tables of the same length, got lengths {len}, {}, {}",
            pred.len(),
            target.len()
        );
        for (sums, table) in [
            (&mut self.intersection, intersection),
            (&mut self.pred, pred),
            (&mut self.target, target),
        ] {
            for row in table.chunks_exact(classes) {
                for (sum, v) in sums.iter_mut().zip(row) {
                    *sum += v;
                }
            }
        }
    }

    /// Adds another's totals (of the same classes, or either empty).
    ///
    /// # Panics
    /// When both have classes and their counts differ.
    pub fn merge(&mut self, other: &DiceTotals) {
        if other.classes() == 0 {
            return;
        }
        self.add_table(
            other.classes(),
            &other.intersection,
            &other.pred,
            &other.target,
        );
    }

    /// The global Dice of every class, `2ΣI / (ΣP + ΣT)`, with `empty` for a class absent from
    /// every ground truth counted.
    pub fn scores(&self, empty: Empty) -> Vec<f64> {
        (0..self.classes())
            .map(|c| dice_score(self.intersection[c], self.pred[c], self.target[c], empty))
            .collect()
    }

    /// The mean of [`scores`](Self::scores) over the classes from `first` on (see
    /// [`first_kept_class`]), NaN skipped; `None` when no class scores.
    pub fn mean(&self, first: usize, empty: Empty) -> Option<f64> {
        nan_mean(self.scores(empty).into_iter().skip(first))
    }

    /// This replica's call of a step of `group`: returns the totals summed over the group's
    /// replicas. Every
    /// replica makes the call, with totals of the same classes, once per epoch at the same
    /// point of its loop (a step of the group like the losses' own, counted with them).
    ///
    /// # Errors
    /// As [`ReplicaGroup::all_reduce`]: a replica missing past the group's timeout, or totals
    /// of other lengths.
    pub fn sum_across(&self, group: &ReplicaGroup) -> Result<DiceTotals, ReplicaError> {
        let values: Vec<f64> = [&self.intersection, &self.pred, &self.target]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let sums = group.all_reduce(&values)?;
        let classes = self.classes();
        Ok(Self {
            intersection: sums[..classes].to_vec(),
            pred: sums[classes..2 * classes].to_vec(),
            target: sums[2 * classes..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_empty_policies() {
        assert_eq!(dice_score(2.0, 3.0, 5.0, Empty::NaN), 0.5);
        assert!(dice_score(0.0, 1.0, 0.0, Empty::NaN).is_nan());
        assert_eq!(dice_score(0.0, 1.0, 0.0, Empty::One), 0.0);
        assert_eq!(dice_score(0.0, 0.0, 0.0, Empty::One), 1.0);
        assert_eq!(dice_score(0.0, 0.0, 0.0, Empty::Zero), 0.0);
        assert_eq!(nan_mean([1.0, f64::NAN, 0.0]), Some(0.5));
        assert_eq!(nan_mean([f64::NAN]), None);
        assert_eq!(first_kept_class(false, 3), 1);
        assert_eq!(first_kept_class(false, 1), 0);
    }

    #[test]
    fn totals_sum_tables_per_class() {
        // Two samples, two classes; then one more sample.
        let mut totals = DiceTotals::default();
        totals.add_table(
            2,
            &[5.0, 1.0, 4.0, 0.0],
            &[6.0, 3.0, 4.0, 1.0],
            &[6.0, 1.0, 6.0, 0.0],
        );
        let mut more = DiceTotals::new(2);
        more.add_table(2, &[1.0, 2.0], &[1.0, 2.0], &[2.0, 4.0]);
        totals.merge(&more);
        assert_eq!(totals.intersection, vec![10.0, 3.0]);
        assert_eq!(totals.pred, vec![11.0, 6.0]);
        assert_eq!(totals.target, vec![14.0, 5.0]);
        // Class 1: 2·3 / (6 + 5), whatever the sample split; the per-sample mean differs.
        assert_eq!(totals.scores(Empty::NaN), vec![20.0 / 25.0, 6.0 / 11.0]);
        assert_eq!(totals.mean(1, Empty::NaN), Some(6.0 / 11.0));
    }

    #[test]
    fn totals_sum_across_a_group() {
        let group = ReplicaGroup::new("metric totals", 2);
        let handles: Vec<_> = (0..2)
            .map(|r| {
                let group = group.clone();
                std::thread::spawn(move || {
                    let mut totals = DiceTotals::new(2);
                    let r = r as f64;
                    totals.add_table(2, &[r, 1.0], &[r + 1.0, 2.0], &[r + 2.0, 3.0]);
                    totals.sum_across(&group).unwrap()
                })
            })
            .collect();
        for handle in handles {
            let sum = handle.join().unwrap();
            assert_eq!(sum.intersection, vec![1.0, 2.0]);
            assert_eq!(sum.pred, vec![3.0, 4.0]);
            assert_eq!(sum.target, vec![5.0, 6.0]);
        }
    }

    #[test]
    #[should_panic(
        expected = "DiceTotals::add_table: `classes` must be the totals' 2 classes, got 3"
    )]
    fn other_classes_are_refused() {
        let mut totals = DiceTotals::new(2);
        totals.add_table(3, &[0.0; 3], &[0.0; 3], &[0.0; 3]);
    }
}
