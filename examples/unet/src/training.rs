//! `train`: burn-train's `Learner` with a burn-dice loss, validated with `DiceMetric`, and the
//! run's artifacts: `config.json`, checkpoints, `metrics.csv`, `curves.png`, `predictions/`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use burn::config::Config;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::record::CompactRecorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn::train::metric::{LossMetric, MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep};
use burn_dice::metric::{DiceMetric, Prediction, SegmentationOutput};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};
use serde::{Deserialize, Serialize};

use crate::schedule::RunSchedule;

use crate::data::{SegBatch, SegBatcher, SegmentationData};
use crate::inference;
use crate::model::{UNet, UNetConfig};
use crate::plot;

/// The loss the network is trained with (all from burn-dice, softmax over the classes).
#[derive(Config, Debug, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LossKind {
    /// Soft Dice, background excluded.
    Dice,
    /// Dice + cross-entropy (nnU-Net's loss).
    DiceCe,
    /// Generalized Dice (square weights).
    GeneralizedDice,
    /// Tversky, α = 0.3, β = 0.7 (recall-leaning).
    Tversky,
    /// Dice + sigmoid focal.
    DiceFocal,
}

/// How the learning rate moves over the run.
#[derive(Config, Debug, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LrSchedule {
    /// The learning rate throughout.
    Constant,
    /// Cosine annealing (Loshchilov & Hutter, "SGDR", ICLR 2017) from the learning rate down to
    /// 1/50 of it at the last step of the last epoch, without restarts (see
    /// [`crate::schedule`]; a resumed run keeps the schedule's length).
    Cosine,
}

/// Everything that defines a run; saved as `config.json` in the output folder.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// The network.
    pub model: UNetConfig,
    /// The loss.
    pub loss: LossKind,
    /// Class names, background first.
    pub class_names: Vec<String>,
    /// Label value left out of loss and metric.
    pub ignore_index: Option<usize>,
    /// Epochs.
    #[config(default = 10)]
    pub epochs: usize,
    /// Batch size.
    #[config(default = 8)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[config(default = 3e-3)]
    pub learning_rate: f64,
    /// Learning-rate schedule.
    #[config(default = "LrSchedule::Cosine")]
    pub lr_schedule: LrSchedule,
    /// The epochs the learning-rate schedule spans: `epochs` of the run as first started (`None`
    /// means `epochs`). `--resume` with another `--epochs` keeps it, so that the rate goes on
    /// where it was; epochs past it run at the schedule's final rate.
    pub schedule_epochs: Option<usize>,
    /// Augment training samples.
    #[config(default = false)]
    pub augment: bool,
    /// Seed of shuffling, augmentation and initialization.
    #[config(default = 42)]
    pub seed: u64,
    /// Data loader workers.
    #[config(default = 1)]
    pub workers: usize,
    /// A description of the data set.
    #[config(default = "String::new()")]
    pub data: String,
    /// Side of the (square) network input, in pixels.
    #[config(default = 64)]
    pub image_size: usize,
}

/// The U-Net with its loss, as burn-train trains it.
#[derive(Module, Debug)]
pub struct SegModel<B: Backend> {
    /// The network.
    pub unet: UNet<B>,
    /// The loss (rebuilt each step: its configs are cheap).
    pub loss: LossKind,
    /// Label value left out.
    pub ignore_index: Option<usize>,
}

impl<B: Backend> SegModel<B> {
    /// Builds the model of `config`.
    pub fn new(config: &TrainConfig, device: &B::Device) -> Self {
        Self {
            unet: config.model.init(device),
            loss: config.loss,
            ignore_index: config.ignore_index,
        }
    }

    /// The loss of `logits` against `labels`.
    pub fn loss(&self, logits: Tensor<B, 4>, labels: Tensor<B, 4, Int>) -> Tensor<B, 1> {
        let device = logits.device();
        let dice = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_include_background(false)
            .with_ignore_index(self.ignore_index);
        match self.loss {
            LossKind::Dice => dice.init(&device).forward(logits, labels),
            LossKind::DiceCe => DiceCELossConfig::new()
                .with_dice(dice)
                .init(&device)
                .forward(logits, labels),
            LossKind::GeneralizedDice => GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_ignore_index(self.ignore_index)
                .init(&device)
                .forward(logits, labels),
            LossKind::Tversky => TverskyLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_include_background(false)
                .with_alpha(0.3)
                .with_beta(0.7)
                .with_ignore_index(self.ignore_index)
                .init(&device)
                .forward(logits, labels),
            LossKind::DiceFocal => DiceFocalLossConfig::new()
                .with_dice(dice)
                .init(&device)
                .forward(logits, labels),
        }
    }

    fn output(&self, batch: SegBatch<B>) -> SegmentationOutput<B> {
        let logits = self.unet.forward(batch.images);
        let loss = self.loss(logits.clone(), batch.labels.clone());
        SegmentationOutput::new(
            loss,
            logits,
            batch.labels,
            Prediction::Argmax,
            self.ignore_index,
        )
    }
}

impl<B: AutodiffBackend> TrainStep for SegModel<B> {
    type Input = SegBatch<B>;
    type Output = SegmentationOutput<B>;

    fn step(&self, batch: SegBatch<B>) -> TrainOutput<SegmentationOutput<B>> {
        let output = self.output(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for SegModel<B> {
    type Input = SegBatch<B>;
    type Output = SegmentationOutput<B>;

    fn step(&self, batch: SegBatch<B>) -> SegmentationOutput<B> {
        self.output(batch)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Epochs run (in this invocation).
    pub epochs: usize,
    /// Wall time of the training in seconds.
    pub seconds: f64,
    /// Per-epoch rows of `metrics.csv`.
    pub rows: Vec<EpochRow>,
}

/// One epoch's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean validation loss.
    pub valid_loss: f64,
    /// Validation Dice, mean over the foreground classes.
    pub valid_dice: f64,
    /// Validation Dice per foreground class.
    pub valid_dice_per_class: Vec<f64>,
}

/// The last epoch with a model checkpoint in `out`, if any.
pub fn last_checkpoint(out: &Path) -> Option<usize> {
    std::fs::read_dir(out.join("checkpoint"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".mpk")?
                .parse()
                .ok()
        })
        .max()
}

/// The saved config of a run, continued up to `epochs`: the learning-rate schedule keeps the
/// length it had (`schedule_epochs`, or the saved `epochs` for a run saved without it).
pub fn resumed(saved: TrainConfig, epochs: usize) -> TrainConfig {
    let schedule = saved.schedule_epochs.unwrap_or(saved.epochs);
    saved
        .with_schedule_epochs(Some(schedule))
        .with_epochs(epochs)
}

/// Trains on `data` and writes the artifacts to `out`. With `resume`, continues from the last
/// checkpoint in `out` (its `config.json` is used).
pub fn train<B: AutodiffBackend>(
    config: TrainConfig,
    data: &dyn SegmentationData,
    out: &Path,
    resume: bool,
    device: &B::Device,
) -> Result<TrainReport, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let resume_from = if resume {
        let epoch = last_checkpoint(out).ok_or_else(|| {
            format!(
                "--resume: no checkpoint in {}",
                out.join("checkpoint").display()
            )
        })?;
        Some(epoch)
    } else {
        None
    };
    config
        .save(out.join("config.json"))
        .map_err(|e| format!("cannot write config.json: {e}"))?;
    B::seed(device, config.seed);
    let splits = data.load()?;
    println!(
        "data: {} — {} training / {} validation images, classes {:?}",
        data.name(),
        splits.train.len(),
        splits.valid.len(),
        config.class_names
    );
    let preview: Vec<_> = splits.valid.iter().take(4).cloned().collect();
    let train_len = splits.train.len();
    let train_loader = DataLoaderBuilder::new(SegBatcher::new(
        config.augment,
        config.ignore_index,
        config.seed,
    ))
    .batch_size(config.batch_size)
    .shuffle(config.seed)
    .num_workers(config.workers)
    .build(InMemDataset::new(splits.train));
    let valid_loader =
        DataLoaderBuilder::new(SegBatcher::new(false, config.ignore_index, config.seed))
            .batch_size(config.batch_size)
            .num_workers(config.workers)
            .build(InMemDataset::new(splits.valid));

    let classes = config.class_names.len();
    let mut training = SupervisedTraining::new(out, train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_valid_numeric(DiceMetric::new().with_include_background(false));
    for c in 1..classes {
        training = training.metric_valid_numeric(DiceMetric::per_class(c));
    }
    training = training
        .with_file_checkpointer(CompactRecorder::new())
        .num_epochs(config.epochs)
        .summary();
    if let Some(epoch) = resume_from {
        println!("resuming after epoch {epoch}");
        training = training.checkpoint(epoch);
    }
    if !std::io::stdout().is_terminal() {
        training = training.renderer(PlainRenderer::new(config.class_names.clone()));
    }
    let model = SegModel::<B>::new(&config, device);
    let optimizer = AdamConfig::new().init();
    let schedule_epochs = config.schedule_epochs.unwrap_or(config.epochs);
    let steps = schedule_epochs * train_len.div_ceil(config.batch_size);
    let min_lr = match config.lr_schedule {
        LrSchedule::Constant => config.learning_rate,
        LrSchedule::Cosine => config.learning_rate / 50.0,
    };
    // One scheduler type for both: a cosine from `lr` to `lr` is the constant.
    let scheduler = RunSchedule::new(config.learning_rate, min_lr, steps.max(1))
        .map_err(|e| format!("--lr {}: {e}", config.learning_rate))?;
    // burn-train 0.21 logs the first epoch of a resumed run as `epoch-1` (its event store has
    // not seen an epoch end yet), overwriting the first epoch's logs, and the later epochs under
    // their real numbers: set the earlier logs aside and renumber after the run.
    if resume_from.is_some() {
        set_logs_aside(out)?;
    }
    let start = Instant::now();
    let result = training.launch(Learner::new(model, optimizer, scheduler));
    if let Some(epoch) = resume_from {
        merge_resumed_logs(out, epoch)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let model = result.model;
    model
        .clone()
        .save_file(out.join("model"), &CompactRecorder::new())
        .map_err(|e| format!("cannot save the model: {e}"))?;

    let rows = read_metrics(out, &config.class_names);
    write_csv(&out.join("metrics.csv"), &rows, &config.class_names)?;
    plot::curves(&out.join("curves.png"), &rows, &config.class_names)?;
    let predictions = out.join("predictions");
    std::fs::create_dir_all(&predictions).map_err(|e| format!("{e}"))?;
    for (k, sample) in preview.iter().enumerate() {
        let pred = inference::predict_sample(&model.unet, sample, device);
        plot::overlay(
            &predictions.join(format!("valid-{k}.png")),
            sample,
            Some(&sample.mask),
            &pred,
            classes,
        )?;
    }
    Ok(TrainReport {
        epochs: config.epochs - resume_from.unwrap_or(0),
        seconds,
        rows,
    })
}

const SPLITS: [&str; 2] = ["train", "valid"];

fn aside(out: &Path, split: &str) -> std::path::PathBuf {
    out.join(format!(".{split}-before-resume"))
}

fn set_logs_aside(out: &Path) -> Result<(), String> {
    for split in SPLITS {
        let (from, to) = (out.join(split), aside(out, split));
        let _ = std::fs::remove_dir_all(&to);
        if from.exists() {
            std::fs::rename(&from, &to)
                .map_err(|e| format!("cannot move {}: {e}", from.display()))?;
        }
    }
    Ok(())
}

fn merge_resumed_logs(out: &Path, resumed_after: usize) -> Result<(), String> {
    for split in SPLITS {
        let (new, old) = (out.join(split), aside(out, split));
        std::fs::create_dir_all(&old).map_err(|e| format!("{e}"))?;
        if let Ok(entries) = std::fs::read_dir(&new) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let Some(k) = name
                    .strip_prefix("epoch-")
                    .and_then(|k| k.parse::<usize>().ok())
                {
                    let real = if k == 1 { resumed_after + 1 } else { k };
                    let target = old.join(format!("epoch-{real}"));
                    let _ = std::fs::remove_dir_all(&target);
                    std::fs::rename(entry.path(), &target)
                        .map_err(|e| format!("cannot move logs: {e}"))?;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&new);
        std::fs::rename(&old, &new).map_err(|e| format!("cannot restore logs: {e}"))?;
    }
    Ok(())
}

/// Weighted means of burn-train's per-batch metric logs, per epoch.
pub fn read_metrics(out: &Path, class_names: &[String]) -> Vec<EpochRow> {
    let mean = |split: &str, epoch: usize, metric: &str| -> Option<f64> {
        let path = out
            .join(split)
            .join(format!("epoch-{epoch}"))
            .join(format!("{}.log", metric.replace(' ', "_")));
        let text = std::fs::read_to_string(path).ok()?;
        let (mut sum, mut n) = (0.0, 0usize);
        for line in text.lines() {
            match NumericEntry::deserialize(line).ok()? {
                NumericEntry::Value(v) => {
                    sum += v;
                    n += 1;
                }
                NumericEntry::Aggregated {
                    aggregated_value,
                    count,
                } => {
                    sum += aggregated_value * count as f64;
                    n += count;
                }
            }
        }
        (n > 0).then(|| sum / n as f64)
    };
    let mut rows = Vec::new();
    for epoch in 1.. {
        let Some(train_loss) = mean("train", epoch, "Loss") else {
            break;
        };
        rows.push(EpochRow {
            epoch,
            train_loss,
            valid_loss: mean("valid", epoch, "Loss").unwrap_or(f64::NAN),
            valid_dice: mean("valid", epoch, "Dice").unwrap_or(f64::NAN),
            valid_dice_per_class: (1..class_names.len())
                .map(|c| mean("valid", epoch, &format!("Dice[class {c}]")).unwrap_or(f64::NAN))
                .collect(),
        });
    }
    rows
}

fn write_csv(path: &Path, rows: &[EpochRow], class_names: &[String]) -> Result<(), String> {
    let mut text = String::from("epoch,train_loss,valid_loss,valid_dice");
    for name in &class_names[1..] {
        text.push_str(&format!(",valid_dice_{}", name.replace([' ', ','], "_")));
    }
    text.push('\n');
    for r in rows {
        text.push_str(&format!(
            "{},{:.6},{:.6},{:.6}",
            r.epoch, r.train_loss, r.valid_loss, r.valid_dice
        ));
        for d in &r.valid_dice_per_class {
            text.push_str(&format!(",{d:.6}"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Progress as plain lines, for logs and pipes (burn's dashboard needs a terminal): one line per
/// epoch with the epoch's means.
pub struct PlainRenderer {
    names: HashMap<MetricId, String>,
    class_names: Vec<String>,
    sums: HashMap<(bool, String), (f64, usize)>,
    epoch: usize,
    started: Instant,
}

impl PlainRenderer {
    /// A renderer naming the per-class metrics after `class_names`.
    pub fn new(class_names: Vec<String>) -> Self {
        Self {
            names: HashMap::new(),
            class_names,
            sums: HashMap::new(),
            epoch: 0,
            started: Instant::now(),
        }
    }

    fn record(&mut self, valid: bool, state: MetricState) {
        if let MetricState::Numeric(
            entry,
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            },
        ) = state
        {
            let name = self
                .names
                .get(&entry.metric_id)
                .cloned()
                .unwrap_or_default();
            let slot = self.sums.entry((valid, name)).or_insert((0.0, 0));
            if count > 0 {
                slot.0 += aggregated_value * count as f64;
                slot.1 += count;
            }
        }
    }

    fn mean(&self, valid: bool, name: &str) -> Option<f64> {
        let (s, n) = self.sums.get(&(valid, name.to_string()))?;
        (*n > 0).then(|| s / *n as f64)
    }

    fn epoch_line(&self, epoch: usize, total: usize) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let mut line = format!(
            "epoch {epoch}/{total}  train loss {}  valid loss {}  Dice {}",
            f(self.mean(false, "Loss")),
            f(self.mean(true, "Loss")),
            f(self.mean(true, "Dice")),
        );
        let per_class: Vec<String> = (1..self.class_names.len())
            .map(|c| {
                format!(
                    "{} {}",
                    self.class_names[c],
                    f(self.mean(true, &format!("Dice[class {c}]")))
                )
            })
            .collect();
        if !per_class.is_empty() {
            line.push_str(&format!("  [{}]", per_class.join(", ")));
        }
        line.push_str(&format!(
            "  ({:.0} s)",
            self.started.elapsed().as_secs_f64()
        ));
        line
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(false, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(true, state);
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if epoch != self.epoch {
            self.epoch = epoch;
            self.sums.clear();
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        if let Some(p) = &item.progress {
            if p.items_processed == p.items_total {
                println!(
                    "{}",
                    self.epoch_line(
                        item.global_progress.items_processed,
                        item.global_progress.items_total
                    )
                );
            }
        }
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn render_test(&mut self, _item: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UNetConfig;

    fn config(epochs: usize) -> TrainConfig {
        TrainConfig::new(
            UNetConfig::new(2),
            LossKind::Dice,
            vec!["bg".into(), "fg".into()],
        )
        .with_epochs(epochs)
    }

    #[test]
    fn a_resumed_run_keeps_its_schedule_length() {
        let first = resumed(config(6), 10);
        assert_eq!((first.epochs, first.schedule_epochs), (10, Some(6)));
        // Resumed again, with yet another --epochs: still the first run's length.
        let again = resumed(first, 4);
        assert_eq!((again.epochs, again.schedule_epochs), (4, Some(6)));
    }

    #[test]
    fn a_config_saved_without_the_schedule_length_still_loads() {
        let mut json: serde_json::Value = serde_json::to_value(config(6)).unwrap();
        json.as_object_mut().unwrap().remove("schedule_epochs");
        let saved: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(saved.schedule_epochs, None);
        assert_eq!(resumed(saved, 9).schedule_epochs, Some(6));
    }
}
