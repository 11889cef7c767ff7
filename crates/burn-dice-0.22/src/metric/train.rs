//! [`DiceMetric`] for burn-train 0.22's `Learner`, and [`SegmentationOutput`], a model output
//! that reduces to Dice counts on the device before anything is read back.

use std::sync::Arc;

use burn::tensor::{ExecutionError, Tensor, TensorData, TensorReadError, Transaction};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};

use burn_dice_core::metric::{dice_score, first_kept_class, nan_mean, DiceTotals};

use super::compute::{DiceCounts, EmptyPolicy, Prediction, Segmentation};

/// A segmentation model's step output for burn-train: the loss, and the hard Dice counts of the
/// batch (`[batch, class]` tables computed on the device).
///
/// Adapts to [`LossInput`] (burn's `LossMetric`) and to [`DiceCounts`] ([`DiceMetric`]'s
/// input). burn-train's sync reads nothing back: it takes the tensors off autodiff; the metric
/// then reads the three `[batch, class]` tables back in one transfer, never the prediction.
#[derive(Debug, Clone)]
pub struct SegmentationOutput {
    /// The loss, `[1]`.
    pub loss: Tensor<1>,
    /// The Dice counts of the batch.
    pub counts: DiceCounts,
}

impl SegmentationOutput {
    /// Builds the output of a step from the loss, the raw `logits` `[batch, class, *spatial]`
    /// and the `target` (class indices `[batch, 1, *spatial]`, or a mask), turning the logits
    /// into a hard prediction with `prediction` ([`Prediction::for_channels`] picks argmax for
    /// several channels, `sigmoid > 0.5` for one). Pixels labelled `ignore_index` count for
    /// neither side.
    pub fn new<const D: usize>(
        loss: Tensor<1>,
        logits: Tensor<D>,
        target: impl Into<Segmentation<D>>,
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
    /// Reads `counts` back to the host, in one transfer.
    ///
    /// # Errors
    /// When the device fails to read them back.
    pub fn try_from_counts(counts: DiceCounts) -> Result<Self, TensorReadError> {
        let [batch, classes] = counts.pred.dims();
        let [i, p, t]: [TensorData; 3] = Transaction::default()
            .register(counts.intersection)
            .register(counts.pred)
            .register(counts.target)
            .try_execute()?
            .try_into()
            .expect("three tensors");
        let host = |d: TensorData| d.convert::<f64>().try_into_vec::<f64>();
        Ok(Self {
            batch,
            classes,
            intersection: host(i)?,
            pred: host(p)?,
            target: host(t)?,
        })
    }

    /// [`try_from_counts`](Self::try_from_counts), panicking where the device fails.
    pub fn from_counts(counts: DiceCounts) -> Self {
        Self::try_from_counts(counts).expect("reading the Dice counts back")
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

impl ItemLazy for SegmentationOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        // No read-back here: the metric reads the three `[batch, class]` tables back itself.
        // Flushing dispatches the step's buffered work; the tensors leave autodiff, so the
        // metric thread neither keeps the tape nor carries its dispatch context.
        self.loss.device().flush()?;
        let DiceCounts {
            intersection,
            pred,
            target,
        } = self.counts;
        Ok(Self {
            loss: self.loss.without_autodiff(),
            counts: DiceCounts {
                intersection: intersection.without_autodiff(),
                pred: pred.without_autodiff(),
                target: target.without_autodiff(),
            },
        })
    }
}

impl Adaptor<LossInput> for SegmentationOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<DiceCounts> for SegmentationOutput {
    fn adapt(&self) -> DiceCounts {
        self.counts.clone()
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
///   Each batch logs its own global Dice; the epoch's final entry is the global Dice of the
///   epoch's sums (burn-train 0.22 takes the epoch value from it).
///
/// [`DiceMetric::per_class`] makes a metric for one class (`Dice[class c]`, or
/// `Global Dice[class c]`).
///
/// Both are the same whatever the batches and whichever replica computed them: under
/// burn-train's multi-device strategy every replica's outputs reach this one metric.
///
/// Fed by [`SegmentationOutput`] (or any output adapting to [`DiceCounts`]); it never sees the
/// prediction itself, only per-(sample, class) counts.
#[derive(Clone)]
pub struct DiceMetric {
    name: Option<MetricName>,
    state: NumericMetricState,
    include_background: bool,
    empty: EmptyPolicy,
    class: Option<usize>,
    global: Option<GlobalState>,
}

/// The epoch's running counts of a global Dice metric.
#[derive(Clone, Debug, Default)]
struct GlobalState {
    totals: DiceTotals,
    /// The last batch's own global Dice.
    batch: Option<f64>,
    /// The epoch's global Dice so far.
    epoch: Option<f64>,
    /// Batches that scored this epoch.
    scored: usize,
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

    fn format(&self) -> FormatOptions {
        FormatOptions::new(self.name()).precision(4)
    }

    /// Adds a batch's host counts to the running value; a batch with nothing to score (every
    /// class absent) leaves it as it is and logs a zero-weight entry.
    fn update_host(&mut self, input: &DiceMetricInput) -> SerializedEntry {
        if self.global.is_some() {
            return self.update_global(input);
        }
        let (value, samples) = self.batch_value(input);
        if samples == 0 {
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
        self.state.update(value, samples);
        self.state.compute_update(self.format())
    }

    fn update_global(&mut self, input: &DiceMetricInput) -> SerializedEntry {
        let batch = input.totals();
        let batch_value = self.global_value(&batch);
        let mut global = self.global.take().expect("a global metric");
        global.totals.merge(&batch);
        global.batch = batch_value;
        global.epoch = self.global_value(&global.totals);
        global.scored += usize::from(batch_value.is_some());
        let formatted = format!("epoch {} - batch {}", text(global.epoch), text(batch_value));
        let entry = NumericEntry::Aggregated {
            aggregated_value: batch_value.unwrap_or(0.0),
            count: usize::from(batch_value.is_some()),
        };
        self.global = Some(global);
        SerializedEntry::new(formatted, entry.serialize())
    }
}

fn text(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), |v| format!("{v:.4}"))
}

impl Metric for DiceMetric {
    type Input = DiceCounts;

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

    fn update(
        &mut self,
        item: &Self::Input,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let input = DiceMetricInput::try_from_counts(item.clone())?;
        Ok(self.update_host(&input))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(match &self.global {
            Some(global) => SerializedEntry::new(
                format!("epoch {}", text(global.epoch)),
                NumericEntry::Final(global.epoch.unwrap_or(f64::NAN)).serialize(),
            ),
            None => self.state.compute_final(self.format()),
        })
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
    fn value(&self) -> Option<NumericEntry> {
        match &self.global {
            Some(global) => global.batch.map(|v| NumericEntry::Aggregated {
                aggregated_value: v,
                count: 1,
            }),
            None => Some(self.state.current_value()),
        }
    }

    /// The epoch's value so far.
    fn running_value(&self) -> Option<NumericEntry> {
        match &self.global {
            Some(global) => global.epoch.map(|v| NumericEntry::Aggregated {
                aggregated_value: v,
                count: global.scored,
            }),
            None => Some(self.state.running_value()),
        }
    }

    /// The epoch's value: for a global metric, the global Dice of the epoch's sums.
    fn final_value(&self) -> NumericEntry {
        match &self.global {
            Some(global) => NumericEntry::Final(global.epoch.unwrap_or(f64::NAN)),
            None => self.state.final_value(),
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

    /// The epoch's final entry after `batches`, as burn-train 0.22 logs it.
    fn final_entry(metric: &mut DiceMetric, batches: &[DiceMetricInput]) -> String {
        for batch in batches {
            metric.update_host(batch);
        }
        metric.compute().expect("host values").serialized
    }

    #[test]
    fn global_dice_is_the_ratio_of_the_epoch_sums_however_it_is_batched() {
        // Class 1: 2·(2+3) / ((3+5) + (2+3)) = 10/13; class 2: 2·1 / ((2+1) + (2+0)) = 2/5.
        let expected = (10.0 / 13.0 + 2.0 / 5.0) / 2.0;
        for batches in [vec![input()], samples()] {
            let mut m = DiceMetric::new().global().with_include_background(false);
            assert_eq!(*m.name(), "Global Dice");
            let entry = final_entry(&mut m, &batches);
            assert_eq!(entry, format!("{expected},final"));
            assert_eq!(m.final_value().current(), expected);
            m.clear();
            assert!(m.running_value().is_none());
            assert_eq!(final_entry(&mut m, &batches), format!("{expected},final"));
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
        let entry = m.update_host(&batches[1]);
        assert_eq!(entry.serialized, "0,0");
        assert_eq!(entry.formatted, "epoch n/a - batch n/a");
        let entry = m.update_host(&batches[0]);
        assert_eq!(entry.serialized, "0.5,1");
        // The epoch: 2·1 / ((2+1) + (2+0)).
        assert_eq!(m.compute().unwrap().serialized, "0.4,final");
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
        m.update_host(&input());
        let mut empty = input();
        empty.target[2] = 0.0;
        let entry = m.update_host(&empty);
        assert_eq!(entry.serialized, "0,0");
        assert!((m.running_value().expect("a running value").current() - 0.5).abs() < 1e-12);
    }

    #[test]
    #[should_panic(expected = "DiceMetric: class 5 requested, the output has 3 class(es)")]
    fn class_out_of_range() {
        DiceMetric::per_class(5).batch_value(&input());
    }
}
