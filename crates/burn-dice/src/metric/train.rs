//! [`DiceMetric`] for burn-train's `Learner`, and [`SegmentationOutput`], a model output that
//! reduces to Dice counts on the device before anything is read back.

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor, Transaction};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn_flex::Flex;

use burn_dice_core::metric::{dice_score, first_kept_class, nan_mean, DiceTotals};

use super::compute::{DiceCounts, EmptyPolicy, Prediction, Segmentation};

/// A segmentation model's step output for burn-train: the loss, and the hard Dice counts of the
/// batch (`[batch, class]` tables computed on the device).
///
/// Adapts to [`LossInput`] (burn's `LossMetric`) and to [`DiceMetricInput`] ([`DiceMetric`]).
/// When burn-train syncs it, only the loss and the three `[batch, class]` tables are read
/// back, in one transfer: never the prediction.
#[derive(Debug, Clone)]
pub struct SegmentationOutput<B: Backend> {
    /// The loss, `[1]`.
    pub loss: Tensor<B, 1>,
    /// The Dice counts of the batch.
    pub counts: DiceCounts<B>,
}

impl<B: Backend> SegmentationOutput<B> {
    /// Builds the output of a step from the loss, the raw `logits` `[batch, class, *spatial]`
    /// and the `target` (class indices `[batch, 1, *spatial]`, or a mask), turning the logits
    /// into a hard prediction with `prediction` ([`Prediction::for_channels`] picks argmax for
    /// several channels, `sigmoid > 0.5` for one). Pixels labelled `ignore_index` count for
    /// neither side.
    pub fn new<const D: usize>(
        loss: Tensor<B, 1>,
        logits: Tensor<B, D>,
        target: impl Into<Segmentation<B, D>>,
        prediction: Prediction,
        ignore_index: Option<usize>,
    ) -> Self {
        let classes = logits.dims()[1];
        let pred = prediction.apply(logits.detach());
        Self {
            loss,
            counts: DiceCounts::new(pred, target, classes, ignore_index),
        }
    }
}

/// [`SegmentationOutput`] after burn-train's sync: the loss on the CPU and the counts as host
/// numbers.
#[derive(Debug, Clone)]
pub struct SegmentationOutputSync {
    /// The loss.
    pub loss: Tensor<Flex, 1>,
    /// The Dice counts.
    pub dice: DiceMetricInput,
}

/// Per-(sample, class) Dice counts on the host, row-major `[batch, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiceMetricInput {
    /// Number of samples.
    pub batch: usize,
    /// Number of classes (background included).
    pub classes: usize,
    /// `|A ∩ B|`.
    pub intersection: Vec<f64>,
    /// `|A|` (prediction).
    pub pred: Vec<f64>,
    /// `|B|` (ground truth).
    pub target: Vec<f64>,
}

impl DiceMetricInput {
    /// Reads device counts back (one transfer).
    pub fn from_counts<B: Backend>(counts: DiceCounts<B>) -> Self {
        let [batch, classes] = counts.pred.dims();
        let [i, p, t] = Transaction::default()
            .register(counts.intersection)
            .register(counts.pred)
            .register(counts.target)
            .execute()
            .try_into()
            .expect("three tensors");
        let host =
            |d: burn::tensor::TensorData| d.convert::<f64>().into_vec::<f64>().expect("floats");
        Self {
            batch,
            classes,
            intersection: host(i),
            pred: host(p),
            target: host(t),
        }
    }

    /// The Dice score of every sample and kept class, `[batch][class']`, with `empty` for the
    /// classes absent from a sample's ground truth.
    pub fn scores(&self, include_background: bool, empty: EmptyPolicy) -> Vec<Vec<f64>> {
        let first = first_kept_class(include_background, self.classes);
        (0..self.batch)
            .map(|b| {
                (first..self.classes)
                    .map(|c| {
                        let k = b * self.classes + c;
                        dice_score(
                            self.intersection[k],
                            self.pred[k],
                            self.target[k],
                            empty.into(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// The counts summed over the batch, per class: add them up over an epoch (and through a
    /// [`ReplicaGroup`](crate::ReplicaGroup) with [`DiceTotals::sum_across`]) for the global
    /// Dice of a custom loop.
    pub fn totals(&self) -> DiceTotals {
        let mut totals = DiceTotals::new(self.classes);
        totals.add_table(self.classes, &self.intersection, &self.pred, &self.target);
        totals
    }
}

impl<B: Backend> ItemLazy for SegmentationOutput<B> {
    type ItemSync = SegmentationOutputSync;

    fn sync(self) -> Self::ItemSync {
        let [batch, classes] = self.counts.pred.dims();
        let [loss, i, p, t] = Transaction::default()
            .register(self.loss)
            .register(self.counts.intersection)
            .register(self.counts.pred)
            .register(self.counts.target)
            .execute()
            .try_into()
            .expect("four tensors");
        let host =
            |d: burn::tensor::TensorData| d.convert::<f64>().into_vec::<f64>().expect("floats");
        SegmentationOutputSync {
            loss: Tensor::from_data(loss, &Default::default()),
            dice: DiceMetricInput {
                batch,
                classes,
                intersection: host(i),
                pred: host(p),
                target: host(t),
            },
        }
    }
}

impl Adaptor<LossInput<Flex>> for SegmentationOutputSync {
    fn adapt(&self) -> LossInput<Flex> {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<DiceMetricInput> for SegmentationOutputSync {
    fn adapt(&self) -> DiceMetricInput {
        self.dice.clone()
    }
}

/// The hard Dice coefficient as a burn-train metric, shown in the dashboard like burn's own.
///
/// Two averages, as MONAI and nnU-Net report them:
///
/// - **Per sample** ([`DiceMetric::new`], `Dice`; the default). Each batch's value is the mean
///   over its samples of the mean over the kept classes, classes absent from a sample's ground
///   truth being skipped (NaN under [`EmptyPolicy::NaN`], the default, as MONAI's
///   `ignore_empty=True` and nnU-Net); a sample whose kept classes are all absent is skipped too
///   (MONAI's `"mean_channel"` reduction scores such a sample 0 instead, which counts an image
///   without foreground as a failure). The epoch value weighs each batch by its number of
///   scored samples, so it is the mean over every scored sample of the epoch.
/// - **Global** ([`DiceMetric::global`], `Global Dice`): nnU-Net's "pseudo Dice". The counts
///   `I`, `P`, `T` of each class are summed over the whole epoch, then `2ΣI / (ΣP + ΣT)` per
///   class, then the mean over the kept classes ([`DiceTotals`]). Every pixel weighs alike, so
///   the false positives of a sample without the class count, and a small structure counts
///   little. A class absent from every ground truth of the epoch scores by the empty policy.
///
/// [`DiceMetric::per_class`] makes a metric for one class (`Dice[class c]`, or
/// `Global Dice[class c]`).
///
/// Both are the same whatever the batches and whichever replica computed them: under
/// burn-train's multi-device strategy every replica's outputs reach this one metric.
///
/// # What is logged
/// burn-train's epoch value (its summary, checkpoint and early-stopping choices) is the
/// count-weighted mean of the logged entries. Per sample, an entry is the batch's value
/// weighted by its scored samples. A global Dice is no weighted mean of batch values, so its
/// entries are increments of weight 1 whose running mean is the epoch's global Dice so far:
/// the `k`-th is `k·G_k − (k−1)·G_{k−1}`, `G_k` being the global Dice over the first `k`
/// batches. The logged epoch value is then exactly the global Dice; single entries are not
/// batch values (the dashboard's text shows the batch's own global Dice).
///
/// Fed by [`SegmentationOutput`] (or any output adapting to [`DiceMetricInput`]); it never
/// sees the prediction itself, only per-(sample, class) counts.
#[derive(Clone)]
pub struct DiceMetric {
    name: Option<MetricName>,
    state: NumericMetricState,
    include_background: bool,
    empty: EmptyPolicy,
    class: Option<usize>,
    global: Option<GlobalState>,
}

/// The epoch's running counts of a global Dice metric, and what it has logged.
#[derive(Clone, Debug, Default)]
struct GlobalState {
    totals: DiceTotals,
    /// The last batch's own global Dice.
    batch: Option<f64>,
    /// The epoch's global Dice so far.
    epoch: Option<f64>,
    /// Entries of weight 1 logged this epoch, and their sum.
    entries: usize,
    logged: f64,
}

impl std::fmt::Debug for DiceMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiceMetric")
            .field("name", &self.name())
            .field("include_background", &self.include_background)
            .field("empty", &self.empty)
            .field("class", &self.class)
            .field("global", &self.global.is_some())
            .finish()
    }
}

impl Default for DiceMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl DiceMetric {
    /// The per-sample mean Dice over the classes, background included (MONAI's default),
    /// named `Dice`.
    pub fn new() -> Self {
        Self {
            name: None,
            state: NumericMetricState::new(),
            include_background: true,
            empty: EmptyPolicy::NaN,
            class: None,
            global: None,
        }
    }

    /// The Dice of class `class` alone, named `Dice[class {class}]`.
    pub fn per_class(class: usize) -> Self {
        Self {
            class: Some(class),
            ..Self::new()
        }
    }

    /// Makes this metric the global Dice of the epoch (nnU-Net's pseudo Dice, see the
    /// [type docs](Self)), named `Global Dice` (`Global Dice[class c]` for one class).
    pub fn global(mut self) -> Self {
        self.global = Some(GlobalState::default());
        self
    }

    /// Whether class 0 counts in the mean (ignored for a single-channel output and for
    /// [`per_class`](Self::per_class) metrics).
    pub fn with_include_background(mut self, include_background: bool) -> Self {
        self.include_background = include_background;
        self
    }

    /// What a class absent from a sample's ground truth scores (for a global metric: absent
    /// from every ground truth of the epoch). Default: [`EmptyPolicy::NaN`].
    pub fn with_empty_policy(mut self, empty: EmptyPolicy) -> Self {
        self.empty = empty;
        self
    }

    /// Renames the metric (names must be unique among a learner's metrics).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(Arc::new(name.into()));
        self
    }

    fn check_class(&self, classes: usize) {
        if let Some(c) = self.class {
            assert!(
                c < classes,
                "DiceMetric: class {c} requested, the output has {classes} class(es)"
            );
        }
    }

    /// The batch's per-sample value and the number of samples it averages.
    pub fn batch_value(&self, input: &DiceMetricInput) -> (f64, usize) {
        self.check_class(input.classes);
        let scores = match self.class {
            Some(c) => input
                .scores(true, self.empty)
                .into_iter()
                .map(|row| vec![row[c]])
                .collect(),
            None => input.scores(self.include_background, self.empty),
        };
        let per_sample: Vec<f64> = scores
            .iter()
            .filter_map(|row| nan_mean(row.iter().copied()))
            .collect();
        match nan_mean(per_sample.iter().copied()) {
            Some(mean) => (mean, per_sample.len()),
            None => (0.0, 0),
        }
    }

    /// The global Dice of `totals` over this metric's classes (the class of a
    /// [`per_class`](Self::per_class) metric, else the kept classes); `None` when no class
    /// scores (absent from every ground truth under [`EmptyPolicy::NaN`]).
    pub fn global_value(&self, totals: &DiceTotals) -> Option<f64> {
        self.check_class(totals.classes());
        let empty = self.empty.into();
        match self.class {
            Some(c) => nan_mean([totals.scores(empty)[c]]),
            None => totals.mean(
                first_kept_class(self.include_background, totals.classes()),
                empty,
            ),
        }
    }

    fn update_global(&mut self, item: &DiceMetricInput) -> SerializedEntry {
        let batch = item.totals();
        let batch_value = self.global_value(&batch);
        let mut global = self.global.take().expect("a global metric");
        global.totals.merge(&batch);
        global.batch = batch_value;
        global.epoch = self.global_value(&global.totals);
        let text = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let formatted = format!("epoch {} - batch {}", text(global.epoch), text(batch_value));
        let entry = match global.epoch {
            // The running mean of the entries is the epoch's global Dice so far.
            Some(epoch) => {
                global.entries += 1;
                let value = epoch * global.entries as f64 - global.logged;
                global.logged += value;
                NumericEntry::Aggregated {
                    aggregated_value: value,
                    count: 1,
                }
            }
            None => NumericEntry::Aggregated {
                aggregated_value: 0.0,
                count: 0,
            },
        };
        self.global = Some(global);
        SerializedEntry::new(formatted, entry.serialize())
    }
}

impl Metric for DiceMetric {
    type Input = DiceMetricInput;

    fn name(&self) -> MetricName {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let kind = if self.global.is_some() {
            "Global Dice"
        } else {
            "Dice"
        };
        Arc::new(match self.class {
            Some(c) => format!("{kind}[class {c}]"),
            None => kind.to_string(),
        })
    }

    fn description(&self) -> Option<String> {
        Some(if self.global.is_some() {
            "Hard Dice coefficient 2ΣI/(ΣP+ΣT) of the counts summed over the epoch, mean over \
             classes (nnU-Net's pseudo Dice)"
                .into()
        } else {
            "Hard Dice coefficient 2|A∩B|/(|A|+|B|), mean over samples of the mean over classes"
                .into()
        })
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: true,
        }
        .into()
    }

    fn update(&mut self, item: &Self::Input, _metadata: &MetricMetadata) -> SerializedEntry {
        if self.global.is_some() {
            return self.update_global(item);
        }
        let (value, samples) = self.batch_value(item);
        if samples == 0 {
            // Nothing to score in this batch (every class absent): leave the running mean as
            // it is, and log a zero-weight entry.
            let running = self.state.running_value().current();
            let entry = NumericEntry::Aggregated {
                aggregated_value: 0.0,
                count: 0,
            };
            return SerializedEntry::new(
                format!("epoch {running:.4} - batch n/a"),
                entry.serialize(),
            );
        }
        self.state
            .update(value, samples, FormatOptions::new(self.name()).precision(4))
    }

    fn clear(&mut self) {
        self.state.reset();
        if let Some(global) = &mut self.global {
            *global = GlobalState::default();
        }
    }
}

impl Numeric for DiceMetric {
    /// The last batch's value (a global metric: the batch's own global Dice).
    fn value(&self) -> NumericEntry {
        match &self.global {
            Some(global) => NumericEntry::Aggregated {
                aggregated_value: global.batch.or(global.epoch).unwrap_or(f64::NAN),
                count: usize::from(global.batch.is_some()),
            },
            None => self.state.current_value(),
        }
    }

    /// The epoch's value so far.
    fn running_value(&self) -> NumericEntry {
        match &self.global {
            Some(global) => NumericEntry::Aggregated {
                aggregated_value: global.epoch.unwrap_or(f64::NAN),
                count: global.entries,
            },
            None => self.state.running_value(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> DiceMetricInput {
        // 2 samples, 3 classes. Sample 1 has no class 2 in its ground truth.
        DiceMetricInput {
            batch: 2,
            classes: 3,
            intersection: vec![5.0, 2.0, 1.0, 4.0, 3.0, 0.0],
            pred: vec![6.0, 3.0, 2.0, 4.0, 5.0, 1.0],
            target: vec![6.0, 2.0, 2.0, 6.0, 3.0, 0.0],
        }
    }

    #[test]
    fn mean_over_samples_of_nan_mean_over_classes() {
        let m = DiceMetric::new().with_include_background(false);
        let (v, n) = m.batch_value(&input());
        let s0 = (4.0 / 5.0 + 2.0 / 4.0) / 2.0;
        let s1 = 6.0 / 8.0; // class 2 absent: skipped
        assert_eq!(n, 2);
        assert!((v - (s0 + s1) / 2.0).abs() < 1e-12, "{v}");
    }

    #[test]
    fn per_class_skips_samples_without_the_class() {
        let (v, n) = DiceMetric::per_class(2).batch_value(&input());
        assert_eq!(n, 1);
        assert!((v - 0.5).abs() < 1e-12);
        let (v, n) = DiceMetric::per_class(2)
            .with_empty_policy(EmptyPolicy::Zero)
            .batch_value(&input());
        assert_eq!((v, n), (0.25, 2));
    }

    fn meta() -> MetricMetadata {
        MetricMetadata {
            progress: burn::data::dataloader::Progress {
                items_processed: 1,
                items_total: 2,
            },
            global_progress: burn::data::dataloader::Progress {
                items_processed: 0,
                items_total: 1,
            },
            iteration: Some(0),
            lr: None,
        }
    }

    /// `input()`'s two samples as two batches.
    fn samples() -> Vec<DiceMetricInput> {
        let i = input();
        (0..2)
            .map(|b| {
                let row = |v: &[f64]| v[3 * b..3 * b + 3].to_vec();
                DiceMetricInput {
                    batch: 1,
                    classes: 3,
                    intersection: row(&i.intersection),
                    pred: row(&i.pred),
                    target: row(&i.target),
                }
            })
            .collect()
    }

    /// Feeds `batches` to `metric`; returns the logged (value, count) entries and burn-train's
    /// epoch value from them (their count-weighted mean).
    fn logged(metric: &mut DiceMetric, batches: &[DiceMetricInput]) -> (Vec<(f64, usize)>, f64) {
        let entries: Vec<(f64, usize)> = batches
            .iter()
            .map(|b| {
                let entry = metric.update(b, &meta());
                let (v, n) = entry.serialized.split_once(',').unwrap();
                (v.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        let (sum, count) = entries
            .iter()
            .fold((0.0, 0), |(s, c), &(v, n)| (s + v * n as f64, c + n));
        (entries, sum / count as f64)
    }

    #[test]
    fn global_dice_is_the_ratio_of_the_epoch_sums_however_it_is_batched() {
        // Class 1: 2·(2+3) / ((3+5) + (2+3)) = 10/13; class 2: 2·1 / ((2+1) + (2+0)) = 2/5.
        let expected = (10.0 / 13.0 + 2.0 / 5.0) / 2.0;
        for batches in [vec![input()], samples()] {
            let mut m = DiceMetric::new().global().with_include_background(false);
            assert_eq!(*m.name(), "Global Dice");
            let (entries, epoch) = logged(&mut m, &batches);
            assert_eq!(entries.len(), batches.len());
            assert!((epoch - expected).abs() < 1e-12, "{epoch} vs {expected}");
            assert!((m.running_value().current() - expected).abs() < 1e-12);
            m.clear();
            assert!(matches!(
                m.running_value(),
                NumericEntry::Aggregated { count: 0, .. }
            ));
            let (_, again) = logged(&mut m, &batches);
            assert!((again - expected).abs() < 1e-12, "after clear: {again}");
        }
        // The per-sample mean of the same data is another number.
        let (per_sample, _) = DiceMetric::new()
            .with_include_background(false)
            .batch_value(&input());
        assert!((per_sample - expected).abs() > 0.05);
    }

    #[test]
    fn global_dice_of_one_class_waits_for_its_first_ground_truth() {
        let mut m = DiceMetric::per_class(2).global();
        assert_eq!(*m.name(), "Global Dice[class 2]");
        let batches = samples();
        // Sample 1 has no class 2: nothing to score yet, a zero-weight entry.
        let entry = m.update(&batches[1], &meta());
        assert_eq!(entry.serialized, "0,0");
        assert_eq!(entry.formatted, "epoch n/a - batch n/a");
        let (entries, epoch) = logged(&mut m, &batches[..1]);
        assert_eq!(entries, vec![(0.4, 1)]);
        assert!((epoch - 0.4).abs() < 1e-12);
    }

    #[test]
    fn totals_of_a_custom_loop() {
        let mut totals = DiceTotals::default();
        for batch in samples() {
            totals.merge(&batch.totals());
        }
        assert_eq!(totals, input().totals());
        let m = DiceMetric::new().global().with_include_background(false);
        let v = m.global_value(&totals).unwrap();
        assert!((v - (10.0 / 13.0 + 2.0 / 5.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn empty_batch_keeps_the_running_mean() {
        let mut m = DiceMetric::per_class(2);
        let meta = meta();
        m.update(&input(), &meta);
        let mut empty = input();
        empty.target[2] = 0.0;
        let entry = m.update(&empty, &meta);
        assert_eq!(entry.serialized, "0,0");
        assert!((m.running_value().current() - 0.5).abs() < 1e-12);
    }

    #[test]
    #[should_panic(expected = "DiceMetric: class 5 requested, the output has 3 class(es)")]
    fn class_out_of_range() {
        DiceMetric::per_class(5).batch_value(&input());
    }
}
