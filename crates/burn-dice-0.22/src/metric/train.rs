//! [`DiceMetric`] for burn-train 0.22's `Learner`, and [`SegmentationOutput`], a model output
//! that reduces to Dice counts on the device before anything is read back.

use std::sync::Arc;

use burn::tensor::{ExecutionError, Tensor, TensorData, TensorReadError, Transaction};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};

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
        let first = usize::from(!include_background && self.classes > 1);
        (0..self.batch)
            .map(|b| {
                (first..self.classes)
                    .map(|c| {
                        let k = b * self.classes + c;
                        let (i, p, t) = (self.intersection[k], self.pred[k], self.target[k]);
                        if t > 0.0 {
                            2.0 * i / (p + t)
                        } else {
                            match empty {
                                EmptyPolicy::NaN => f64::NAN,
                                EmptyPolicy::Zero => 0.0,
                                EmptyPolicy::One => f64::from(u8::from(p == 0.0)),
                            }
                        }
                    })
                    .collect()
            })
            .collect()
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
/// Each batch's value is the mean over its samples of the mean over the kept classes, classes
/// absent from a sample's ground truth being skipped (NaN under [`EmptyPolicy::NaN`], the
/// default, as MONAI's `ignore_empty=True` and nnU-Net); a sample whose kept classes are all
/// absent is skipped too (MONAI's `"mean_channel"` reduction scores such a sample 0 instead,
/// which counts an image without foreground as a failure). The epoch value weighs each batch by
/// its number of scored samples, so it is the mean over every scored sample of the epoch.
///
/// [`DiceMetric::per_class`] makes a metric for one class (`Dice[class c]`): the mean over the
/// samples whose ground truth has that class.
///
/// Fed by [`SegmentationOutput`] (or any output adapting to [`DiceMetricInput`]); it never
/// sees the prediction itself, only per-(sample, class) counts.
#[derive(Clone)]
pub struct DiceMetric {
    name: MetricName,
    state: NumericMetricState,
    include_background: bool,
    empty: EmptyPolicy,
    class: Option<usize>,
}

impl std::fmt::Debug for DiceMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiceMetric")
            .field("name", &self.name)
            .field("include_background", &self.include_background)
            .field("empty", &self.empty)
            .field("class", &self.class)
            .finish()
    }
}

impl Default for DiceMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl DiceMetric {
    /// The mean Dice over the classes, background included (MONAI's default), named `Dice`.
    pub fn new() -> Self {
        Self {
            name: Arc::new("Dice".to_string()),
            state: NumericMetricState::new(),
            include_background: true,
            empty: EmptyPolicy::NaN,
            class: None,
        }
    }

    /// The Dice of class `class` alone, named `Dice[class {class}]`.
    pub fn per_class(class: usize) -> Self {
        Self {
            name: Arc::new(format!("Dice[class {class}]")),
            class: Some(class),
            ..Self::new()
        }
    }

    /// Whether class 0 counts in the mean (ignored for a single-channel output and for
    /// [`per_class`](Self::per_class) metrics).
    pub fn with_include_background(mut self, include_background: bool) -> Self {
        self.include_background = include_background;
        self
    }

    /// What a class absent from a sample's ground truth scores. Default: [`EmptyPolicy::NaN`].
    pub fn with_empty_policy(mut self, empty: EmptyPolicy) -> Self {
        self.empty = empty;
        self
    }

    /// Renames the metric (names must be unique among a learner's metrics).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::new(name.into());
        self
    }

    /// The batch's value and the number of samples it averages.
    pub fn batch_value(&self, input: &DiceMetricInput) -> (f64, usize) {
        let scores = match self.class {
            Some(c) => {
                assert!(
                    c < input.classes,
                    "DiceMetric: class {c} requested, the output has {} class(es)",
                    input.classes
                );
                input
                    .scores(true, self.empty)
                    .into_iter()
                    .map(|row| vec![row[c]])
                    .collect()
            }
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
}

impl DiceMetric {
    fn format(&self) -> FormatOptions {
        FormatOptions::new(self.name()).precision(4)
    }

    /// Adds a batch's host counts to the running mean; a batch with nothing to score (every
    /// class absent) leaves it as it is and logs a zero-weight entry.
    fn update_host(&mut self, input: &DiceMetricInput) -> SerializedEntry {
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
}

fn nan_mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl Metric for DiceMetric {
    type Input = DiceCounts;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some(
            "Hard Dice coefficient 2|A∩B|/(|A|+|B|), mean over samples of the mean over classes"
                .into(),
        )
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
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.state.reset();
    }
}

impl Numeric for DiceMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
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
