//! `train`: burn-train's `Learner` with a burn-dice loss, validated with `DiceMetric`, and the
//! run's artifacts: `config.json`, checkpoints, `metrics.csv`, `curves.png`, `predictions/`.

use std::io::IsTerminal;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::config::Config;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::AdamConfig;
use burn::record::CompactRecorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::metric::LossMetric;
use burn::train::renderer::tui::TuiMetricsRendererWrapper;
use burn::train::renderer::MetricsRenderer;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, SupervisedTraining, TrainOutput,
    TrainStep,
};
use burn_dice::metric::{DiceMetric, Prediction, SegmentationOutput};
use burn_dice::processes::{ModuleSums, Processes};
use burn_dice::{
    Activation, DiceCELoss, DiceCELossConfig, DiceFocalLoss, DiceFocalLossConfig, DiceLoss,
    DiceLossConfig, GeneralizedDiceLoss, GeneralizedDiceLossConfig, GradientCombine, ReplicaGroup,
    TverskyLoss, TverskyLossConfig,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{last_checkpoint, AtomicRecorder};
use crate::data::{SegBatch, SegBatcher, SegmentationData};
use crate::inference;
use crate::model::{UNet, UNetConfig};
use crate::plot;
use crate::progress::{EpochRenderer, RunLog};
use crate::schedule::RunSchedule;

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
    /// Epochs (a fraction allowed) over which the learning rate rises linearly to its peak
    /// before the schedule (`None`: none, as runs saved before this option).
    pub warmup_epochs: Option<f64>,
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
    /// Data-parallel replicas of the training step (`None`: 1). Each replica is a thread with
    /// its own copy of the model and its own share of the training set, and takes `batch_size`
    /// samples a step; their gradients are averaged into one optimizer step, so a step sees
    /// `replicas × batch_size` samples. Batch norm normalizes each replica's batch on its own
    /// (as PyTorch's DistributedDataParallel without SyncBatchNorm). On the CPU backends this
    /// is what puts every core to work: burn-flex runs most of a step's ops on one thread.
    pub replicas: Option<usize>,
    /// The loss's statistics summed over the whole step before the ratio (nnU-Net's "batch
    /// Dice": `batch: true` on the loss). Off by default, as MONAI's `batch=False`: one Dice
    /// per image, which weighs every image alike. With `replicas > 1` the replicas sum their
    /// statistics through a [`ReplicaGroup`], so that the loss is the batch Dice of the step's
    /// `replicas × batch_size` images, not one per replica; the training set is then trimmed
    /// to a multiple of `replicas`, so that every replica makes every step (the group's rule).
    #[config(default = false)]
    pub batch_dice: bool,
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
    /// Training steps started (shared by the clones of the model), for the message of a
    /// training that stops on a non-finite loss.
    #[module(skip)]
    pub steps: Arc<AtomicUsize>,
    /// Data-parallel replicas: each replica's gradient is scaled by `1 / replicas`, so that
    /// the optimizer gets their mean.
    #[module(skip)]
    pub replicas: usize,
    /// Sum the statistics over the batch before the ratio.
    #[module(skip)]
    pub batch_dice: bool,
    /// The replicas' group of a data-parallel run with batch Dice (shared by the clones):
    /// their statistics are summed before the ratio, in training steps only.
    #[module(skip)]
    pub group: Option<ReplicaGroup>,
    /// The processes of a run across processes (`--nodes`): each training step's gradients
    /// are summed over them (and, with batch Dice, `group` spans them).
    #[module(skip)]
    pub processes: Option<Arc<Processes>>,
    /// The message of the first training step that panicked (shared by the clones). A replica
    /// runs on a thread of burn-train's, which only sees the channel to it close: [`train`]
    /// reports this message instead.
    #[module(skip)]
    pub failure: Arc<Mutex<Option<String>>>,
}

/// `loss` on `group` where there is one.
fn on<L>(loss: L, group: Option<ReplicaGroup>, with_replicas: fn(L, ReplicaGroup) -> L) -> L {
    match group {
        Some(group) => with_replicas(loss, group),
        None => loss,
    }
}

/// The replica group of a run: one with batch Dice on more than one replica. Each replica
/// divides its loss by the replicas (see `train_step`), so the group scales each replica's
/// share of the gradient by as much ([`GradientCombine::Mean`]).
pub fn replica_group(config: &TrainConfig) -> Option<ReplicaGroup> {
    replica_group_on(config, None)
}

/// [`replica_group`] of a run on `processes`: with batch Dice the group spans them (even with
/// one replica each), waiting for them as long as they wait for each other.
pub fn replica_group_on(
    config: &TrainConfig,
    processes: Option<&Arc<Processes>>,
) -> Option<ReplicaGroup> {
    let replicas = config.replicas.unwrap_or(1);
    let nodes = processes.map_or(1, |p| p.config().processes);
    (config.batch_dice && replicas * nodes > 1).then(|| {
        let group =
            ReplicaGroup::new("unet training steps", replicas).with_combine(GradientCombine::Mean);
        match processes {
            Some(p) => group
                .with_timeout(p.config().timeout)
                .with_processes(p.clone()),
            None => group,
        }
    })
}

/// Initializes every float parameter it visits.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// The start of the panic message of a training step whose loss is not finite.
pub const NON_FINITE_LOSS: &str = "the training loss is not finite";

impl<B: Backend> SegModel<B> {
    /// Builds the model of `config`, its parameters initialized.
    ///
    /// burn initializes a parameter on first use, and a clone of a parameter not yet used
    /// draws values of its own: the replicas of a run with `replicas > 1` (each a clone) would
    /// take their first step from different weights, and the optimizer would apply their
    /// gradients to a third set.
    pub fn new(config: &TrainConfig, device: &B::Device) -> Self {
        let model = Self {
            unet: config.model.init(device),
            loss: config.loss,
            ignore_index: config.ignore_index,
            steps: Arc::new(AtomicUsize::new(0)),
            replicas: config.replicas.unwrap_or(1).max(1),
            batch_dice: config.batch_dice,
            group: replica_group(config),
            processes: None,
            failure: Arc::default(),
        };
        model.visit(&mut Materialize);
        model
    }

    /// The loss of `logits` against `labels`; with `group`, its batch statistics summed across
    /// the group's replicas (training steps of a data-parallel run with batch Dice).
    pub fn loss(
        &self,
        logits: Tensor<B, 4>,
        labels: Tensor<B, 4, Int>,
        group: Option<&ReplicaGroup>,
    ) -> Tensor<B, 1> {
        let device = logits.device();
        let dice = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_include_background(false)
            .with_batch(self.batch_dice)
            .with_ignore_index(self.ignore_index);
        let group = || group.cloned();
        match self.loss {
            LossKind::Dice => {
                on(dice.init(&device), group(), DiceLoss::with_replicas).forward(logits, labels)
            }
            LossKind::DiceCe => on(
                DiceCELossConfig::new().with_dice(dice).init(&device),
                group(),
                DiceCELoss::with_replicas,
            )
            .forward(logits, labels),
            LossKind::GeneralizedDice => on(
                GeneralizedDiceLossConfig::new()
                    .with_activation(Activation::Softmax)
                    .with_batch(self.batch_dice)
                    .with_ignore_index(self.ignore_index)
                    .init(&device),
                group(),
                GeneralizedDiceLoss::with_replicas,
            )
            .forward(logits, labels),
            LossKind::Tversky => on(
                TverskyLossConfig::new()
                    .with_activation(Activation::Softmax)
                    .with_include_background(false)
                    .with_alpha(0.3)
                    .with_beta(0.7)
                    .with_batch(self.batch_dice)
                    .with_ignore_index(self.ignore_index)
                    .init(&device),
                group(),
                TverskyLoss::with_replicas,
            )
            .forward(logits, labels),
            LossKind::DiceFocal => on(
                DiceFocalLossConfig::new().with_dice(dice).init(&device),
                group(),
                DiceFocalLoss::with_replicas,
            )
            .forward(logits, labels),
        }
    }

    fn output(&self, batch: SegBatch<B>, group: Option<&ReplicaGroup>) -> SegmentationOutput<B> {
        let logits = self.unet.forward(batch.images);
        let loss = self.loss(logits.clone(), batch.labels.clone(), group);
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

    /// # Panics
    /// When the loss is NaN or infinite ([`NON_FINITE_LOSS`]); [`train`] turns that into an
    /// error naming the epoch, the batch and the last complete checkpoint.
    fn step(&self, batch: SegBatch<B>) -> TrainOutput<SegmentationOutput<B>> {
        let step = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.train_step(step, batch))) {
            Ok(output) => output,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(message);
                std::panic::resume_unwind(payload)
            }
        }
    }
}

impl<B: AutodiffBackend> SegModel<B> {
    fn train_step(&self, step: usize, batch: SegBatch<B>) -> TrainOutput<SegmentationOutput<B>> {
        let output = self.output(batch, self.group.as_ref());
        // burn-train's loss metric reads the value back anyway: checking it costs no extra wait.
        let value: f64 = output.loss.clone().into_scalar().elem();
        assert!(value.is_finite(), "{NON_FINITE_LOSS}: {value}");
        // burn-train sums the replicas' gradients, and the processes sum theirs: each
        // replica of each process contributes its share of the mean.
        let nodes = self.processes.as_ref().map_or(1, |p| p.config().processes);
        let grads = match self.replicas * nodes {
            1 => output.loss.backward(),
            n => output.loss.clone().div_scalar(n as f64).backward(),
        };
        let mut out = TrainOutput::new(self, grads, output);
        if let Some(processes) = &self.processes {
            out.grads = processes
                .sum_gradients(step as u64, self, out.grads)
                .unwrap_or_else(|e| panic!("the sum of the gradients across --nodes failed: {e}"));
        }
        out
    }
}

impl<B: Backend> InferenceStep for SegModel<B> {
    type Input = SegBatch<B>;
    type Output = SegmentationOutput<B>;

    fn step(&self, batch: SegBatch<B>) -> SegmentationOutput<B> {
        // Validation runs each batch on its own: no group.
        self.output(batch, None)
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

/// The saved config of a run, continued up to `epochs`: the learning-rate schedule keeps the
/// length it had (`schedule_epochs`, or the saved `epochs` for a run saved without it).
pub fn resumed(saved: TrainConfig, epochs: usize) -> TrainConfig {
    let schedule = saved.schedule_epochs.unwrap_or(saved.epochs);
    saved
        .with_schedule_epochs(Some(schedule))
        .with_epochs(epochs)
}

/// Trains on `data` and writes the artifacts to `out`. With `resume`, continues from the last
/// complete checkpoint in `out` (its `config.json` is used).
///
/// `metrics.csv` and `curves.png` are brought up to date after every epoch and checkpoints are
/// written then renamed, so a run stopped at any point can be resumed with every finished
/// epoch in its log exactly once. A loss that turns NaN or infinite stops the run with an
/// error naming the epoch, the batch and the last complete checkpoint.
pub fn train<B: AutodiffBackend>(
    config: TrainConfig,
    data: &dyn SegmentationData,
    out: &Path,
    resume: bool,
    device: &B::Device,
) -> Result<TrainReport, String> {
    train_on_nodes::<B>(config, data, out, resume, None, device)
}

/// [`train`] as one of the processes of a data-parallel run across processes (`--nodes`):
/// this process trains on its share of the training set (rank `r` of `n` takes the `r`-th of
/// `n` equal slices, the rest left out so that every process makes every step), starts from
/// the coordinator's weights, and sums each step's gradients with the other processes (with
/// batch Dice, the loss's statistics too). Each process validates on the whole validation
/// set with its model: the models differ only in their batch-norm running statistics, which
/// each process keeps from its own batches. `None` is [`train`].
pub fn train_on_nodes<B: AutodiffBackend>(
    config: TrainConfig,
    data: &dyn SegmentationData,
    out: &Path,
    resume: bool,
    processes: Option<Arc<Processes>>,
    device: &B::Device,
) -> Result<TrainReport, String> {
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create --out {}: {e}", out.display()))?;
    let resume_from = if resume {
        let epoch = last_checkpoint(out).ok_or_else(|| {
            format!(
                "--resume: no complete checkpoint in {}",
                out.join("checkpoint").display()
            )
        })?;
        Some(epoch)
    } else {
        None
    };
    let config_path = out.join("config.json");
    crate::progress::write_atomic(&config_path, config.to_string().as_bytes())?;
    B::seed(device, config.seed);
    let mut splits = data.load()?;
    if let Some(processes) = &processes {
        let (rank, nodes) = (processes.rank(), processes.config().processes);
        let share = splits.train.len() / nodes;
        if share == 0 {
            return Err(format!(
                "--nodes {nodes}: {} training images cannot give every node one",
                splits.train.len()
            ));
        }
        println!(
            "node {rank} of {nodes}: training on images {}..{} of the {} (an equal share each)",
            rank * share,
            (rank + 1) * share,
            splits.train.len()
        );
        splits.train.truncate((rank + 1) * share);
        splits.train.drain(..rank * share);
    }
    let replicas = config.replicas.unwrap_or(1);
    if let Some(kept) = whole_steps(splits.train.len(), replicas, config.batch_dice) {
        println!(
            "batch Dice on {replicas} replicas: training on {kept} of the {} training images \
             (a multiple of the replicas, so that every replica makes every step)",
            splits.train.len()
        );
        splits.train.truncate(kept);
    }
    println!(
        "data: {} — {} training / {} validation images, classes {:?}",
        data.name(),
        splits.train.len(),
        splits.valid.len(),
        config.class_names
    );
    let preview: Vec<_> = splits.valid.iter().take(4).cloned().collect();
    let train_len = splits.train.len();
    let (steps_per_epoch, batches) = epoch_steps(train_len, replicas, config.batch_size)?;
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
    let log = Arc::new(Mutex::new(RunLog::start(
        out,
        &config.class_names,
        resume_from,
    )?));
    let mut training = SupervisedTraining::new(out, train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_valid_numeric(DiceMetric::new().with_include_background(false));
    for c in 1..classes {
        training = training.metric_valid_numeric(DiceMetric::per_class(c));
    }
    training = training
        .with_file_checkpointer(AtomicRecorder(CompactRecorder::new()))
        .num_epochs(config.epochs)
        .summary();
    if replicas > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::multi(
                vec![device.clone(); replicas],
                MultiDeviceOptim::OptimMainDevice,
            )
            .into(),
        );
    }
    if let Some(epoch) = resume_from {
        println!("resuming after epoch {epoch}");
        training = training.checkpoint(epoch);
    }
    let dashboard: Option<Box<dyn MetricsRenderer>> = std::io::stdout().is_terminal().then(|| {
        Box::new(TuiMetricsRendererWrapper::new(
            training.interrupter(),
            resume_from,
        )) as Box<dyn MetricsRenderer>
    });
    let interrupter = training.interrupter();
    training = training.renderer(EpochRenderer::new(
        dashboard,
        log.clone(),
        interrupter.clone(),
    ));
    let mut model = SegModel::<B>::new(&config, device);
    if let Some(processes) = &processes {
        // Every process starts from the coordinator's weights (a resumed run from its own
        // checkpoint, which holds the same weights in every process).
        model.unet = processes.share_module(model.unet)?;
        model.group = replica_group_on(&config, Some(processes));
        model.processes = Some(processes.clone());
    }
    let steps = model.steps.clone();
    let failure = model.failure.clone();
    let optimizer = AdamConfig::new().init();
    let schedule_epochs = config.schedule_epochs.unwrap_or(config.epochs);
    let min_lr = match config.lr_schedule {
        LrSchedule::Constant => config.learning_rate,
        LrSchedule::Cosine => config.learning_rate / 50.0,
    };
    // One scheduler type for both: a cosine from `lr` to `lr` is the constant.
    let scheduler = RunSchedule::new(
        config.learning_rate,
        min_lr,
        (schedule_epochs * steps_per_epoch).max(1),
    )
    .map_err(|e| format!("--lr {}: {e}", config.learning_rate))?
    .with_warmup(warmup_steps(config.warmup_epochs, steps_per_epoch)?);
    logs_of_resumed_runs(out, resume_from)?;
    let start = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        training.launch(Learner::new(model, optimizer, scheduler))
    }));
    let seconds = start.elapsed().as_secs_f64();
    merge_logs_set_aside(out)?;
    let result = match result {
        Ok(result) => result,
        Err(payload) => {
            // A step's own message first: on a replica's thread, burn-train's main thread
            // only sees the replica's channel close.
            let step_failure = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
            let message = step_failure.unwrap_or_else(|| panic_message(payload.as_ref()));
            let step = steps.load(Ordering::Relaxed).max(1) - 1;
            let epoch = resume_from.unwrap_or(0) + step / batches.max(1) + 1;
            let checkpoint = match last_checkpoint(out) {
                Some(k) => format!(
                    "the last complete checkpoint is epoch {k} in {} (continue with --resume)",
                    out.join("checkpoint").display()
                ),
                None => "there is no complete checkpoint yet".into(),
            };
            let what = if message.starts_with(NON_FINITE_LOSS)
                || message.contains("holds NaN or infinite values")
            {
                "the loss turned non-finite (lower --lr?)"
            } else {
                "the training failed"
            };
            return Err(format!(
                "{what} at epoch {epoch}, batch {}/{batches}: {message}; {checkpoint}",
                step % batches.max(1) + 1
            ));
        }
    };
    // A checkpoint or a log that could not be written stops the run with its reason (a stop
    // without one is the dashboard's quit key: the model so far is kept as usual).
    if let Some(reason) = interrupter.get_message() {
        let done = log
            .lock()
            .expect("run log")
            .rows()
            .last()
            .map_or(0, |r| r.epoch);
        let checkpoint = last_checkpoint(out).map_or_else(
            || "no complete checkpoint".to_string(),
            |k| format!("the last complete checkpoint is epoch {k}"),
        );
        return Err(format!(
            "training stopped after epoch {done}: {reason}; {checkpoint} in {}",
            out.join("checkpoint").display()
        ));
    }
    let model = result.model;
    model
        .clone()
        .save_file(out.join("model"), &AtomicRecorder(CompactRecorder::new()))
        .map_err(|e| format!("cannot save the model: {e}"))?;

    let rows = log.lock().expect("run log").rows().to_vec();
    let predictions = out.join("predictions");
    std::fs::create_dir_all(&predictions)
        .map_err(|e| format!("cannot create {}: {e}", predictions.display()))?;
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
        epochs: config.epochs - resume_from.unwrap_or(0).min(config.epochs),
        seconds,
        rows,
    })
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The optimizer steps of an epoch of `train_len` images on `replicas` replicas taking
/// `batch_size` images each a step, and the batches of all replicas together (the training
/// steps that `SegModel::steps` counts).
///
/// burn-train gives replica `i` the images `[i·⌊n/r⌋, (i+1)·⌊n/r⌋)` (the last one the rest)
/// and steps while any replica has a batch left: the last replica's batches are the steps.
pub fn epoch_steps(
    train_len: usize,
    replicas: usize,
    batch_size: usize,
) -> Result<(usize, usize), String> {
    if replicas == 0 || replicas > train_len {
        return Err(format!(
            "--replicas must be between 1 and the number of training images ({train_len}), \
             got {replicas}"
        ));
    }
    if batch_size == 0 {
        return Err("--batch-size must be at least 1, got 0".into());
    }
    let share = train_len / replicas;
    let last = train_len - (replicas - 1) * share;
    let batches = (replicas - 1) * share.div_ceil(batch_size) + last.div_ceil(batch_size);
    Ok((last.div_ceil(batch_size), batches))
}

/// The training images a run keeps so that every replica makes every step, where that is
/// fewer than `train_len`: with batch Dice on several replicas, whose [`ReplicaGroup`] needs
/// the replicas' calls step by step (burn-train gives each replica `⌊n/r⌋` images and the last
/// one the rest: with `n` a multiple of `r` the shares, and so the steps, are equal).
pub fn whole_steps(train_len: usize, replicas: usize, batch_dice: bool) -> Option<usize> {
    let kept = train_len - train_len % replicas.max(1);
    (batch_dice && replicas > 1 && kept < train_len && kept > 0).then_some(kept)
}

/// The optimizer steps of a warm-up of `epochs` epochs (rounded).
fn warmup_steps(epochs: Option<f64>, steps_per_epoch: usize) -> Result<usize, String> {
    match epochs {
        None => Ok(0),
        Some(e) if e.is_finite() && e >= 0.0 => Ok((e * steps_per_epoch as f64).round() as usize),
        Some(e) => Err(format!(
            "--warmup-epochs must be a finite number ≥ 0, got {e}"
        )),
    }
}

const SPLITS: [&str; 2] = ["train", "valid"];

/// Where the per-batch logs of the epochs before a resume wait during the resumed run.
fn aside(out: &Path, split: &str) -> std::path::PathBuf {
    out.join(format!(".{split}-before-resume"))
}

/// The epoch the logs set aside were resumed after (written with them).
fn aside_marker(out: &Path) -> std::path::PathBuf {
    out.join(".resumed-after")
}

/// burn-train 0.21 logs the first epoch of a resumed run as `epoch-1` (its event store has not
/// seen an epoch end yet), over the first epoch's per-batch logs, and the later epochs under
/// their real numbers. Before a resumed run: the logs of a resumed run that was stopped are
/// merged back first (renumbered), then the current logs are set aside with the epoch resumed
/// after; after the run [`merge_resumed_logs`] renumbers and merges. `metrics.csv` does not
/// depend on this: it is written by [`RunLog`].
fn logs_of_resumed_runs(out: &Path, resume_from: Option<usize>) -> Result<(), String> {
    merge_logs_set_aside(out)?;
    let Some(epoch) = resume_from else {
        return Ok(());
    };
    for split in SPLITS {
        let (from, to) = (out.join(split), aside(out, split));
        let _ = std::fs::remove_dir_all(&to);
        if from.exists() {
            std::fs::rename(&from, &to)
                .map_err(|e| format!("cannot move {}: {e}", from.display()))?;
        }
    }
    crate::progress::write_atomic(&aside_marker(out), epoch.to_string().as_bytes())
}

/// Merges the logs set aside by [`logs_of_resumed_runs`], if any, with the resumed run's.
fn merge_logs_set_aside(out: &Path) -> Result<(), String> {
    if let Ok(text) = std::fs::read_to_string(aside_marker(out)) {
        if let Ok(epoch) = text.trim().parse() {
            merge_resumed_logs(out, epoch)?;
        }
        let _ = std::fs::remove_file(aside_marker(out));
    }
    Ok(())
}

fn merge_resumed_logs(out: &Path, resumed_after: usize) -> Result<(), String> {
    for split in SPLITS {
        let (new, old) = (out.join(split), aside(out, split));
        std::fs::create_dir_all(&old)
            .map_err(|e| format!("cannot create {}: {e}", old.display()))?;
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
    fn epoch_steps_follow_burns_split_of_the_training_set() {
        // One replica: the batches are the steps.
        assert_eq!(epoch_steps(2048, 1, 8).unwrap(), (256, 256));
        // Two replicas of 1,024 images: 128 steps of 2 batches.
        assert_eq!(epoch_steps(2048, 2, 8).unwrap(), (128, 256));
        // 11 images on 2 replicas take 5 and 6: batches of 4 give 2 + 2, and 2 steps.
        assert_eq!(epoch_steps(11, 2, 4).unwrap(), (2, 4));
        // 10 on 3 take 3, 3 and 4: with batches of 3, the last replica steps twice.
        assert_eq!(epoch_steps(10, 3, 3).unwrap(), (2, 4));
        let burn = |n: usize, r: usize| {
            let loader = DataLoaderBuilder::<burn_flex::Flex, usize, usize>::new(CountBatcher)
                .batch_size(3)
                .build(InMemDataset::new((0..n).collect()));
            let devices = vec![burn_flex::FlexDevice; r];
            burn::data::dataloader::split::split_dataloader(loader, &devices)
                .iter()
                .map(|l| l.iter().count())
                .collect::<Vec<_>>()
        };
        for (n, r) in [(10, 3), (11, 2), (7, 7), (100, 3)] {
            let per_replica = burn(n, r);
            let (steps, batches) = epoch_steps(n, r, 3).unwrap();
            assert_eq!(steps, *per_replica.iter().max().unwrap(), "{n} on {r}");
            assert_eq!(batches, per_replica.iter().sum::<usize>(), "{n} on {r}");
        }
    }

    #[derive(Clone)]
    struct CountBatcher;

    impl burn::data::dataloader::batcher::Batcher<burn_flex::Flex, usize, usize> for CountBatcher {
        fn batch(&self, items: Vec<usize>, _device: &burn_flex::FlexDevice) -> usize {
            items.len()
        }
    }

    #[test]
    fn bad_replicas_are_named() {
        let err = epoch_steps(8, 0, 4).unwrap_err();
        assert!(err.contains("--replicas") && err.contains("got 0"), "{err}");
        let err = epoch_steps(8, 9, 4).unwrap_err();
        assert!(err.contains("(8)") && err.contains("got 9"), "{err}");
        let err = warmup_steps(Some(f64::NAN), 10).unwrap_err();
        assert!(
            err.contains("--warmup-epochs") && err.contains("NaN"),
            "{err}"
        );
        assert_eq!(warmup_steps(Some(0.5), 128).unwrap(), 64);
        assert_eq!(warmup_steps(None, 128).unwrap(), 0);
    }

    #[test]
    fn each_replica_contributes_its_share_of_the_mean_gradient() {
        type A = burn_autodiff::Autodiff<burn_flex::Flex>;
        let device = Default::default();
        <A as Backend>::seed(&device, 3);
        let mut config = config(1);
        config.model = UNetConfig::new(2).with_depth(1).with_base_channels(4);
        let one = SegModel::<A>::new(&config, &device);
        // Cloned before any step: `SegModel::new` has initialized the parameters, so both
        // hold the same weights.
        let two = SegModel {
            replicas: 2,
            ..one.clone()
        };
        let images = Tensor::<A, 4>::random(
            [2, 1, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let labels = Tensor::<A, 4, Int>::from_data(
            burn::tensor::TensorData::new(
                (0..128).map(|i| i64::from(i % 3 == 0)).collect(),
                [2, 1, 8, 8],
            ),
            &device,
        );
        let grads = |model: &SegModel<A>| {
            let batch = SegBatch {
                images: images.clone(),
                labels: labels.clone(),
            };
            TrainStep::step(model, batch).grads
        };
        let mut halved = Halved {
            one: grads(&one),
            two: grads(&two),
            compared: 0,
        };
        one.visit(&mut halved);
        // Every convolution weight, batch-norm scale and shift, and the output bias.
        assert!(halved.compared >= 10, "{} parameters", halved.compared);
    }

    /// Checks that the gradient of every parameter in `two` is half that in `one`.
    struct Halved {
        one: burn::optim::GradientsParams,
        two: burn::optim::GradientsParams,
        compared: usize,
    }

    impl<B: Backend> burn::module::ModuleVisitor<B> for Halved {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            type Inner = burn_flex::Flex;
            let (Some(a), Some(b)) = (
                self.one.get::<Inner, D>(param.id),
                self.two.get::<Inner, D>(param.id),
            ) else {
                return;
            };
            let a = a.into_data().to_vec::<f32>().unwrap();
            let b = b.into_data().to_vec::<f32>().unwrap();
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "a zero gradient proves nothing");
            for (x, y) in a.iter().zip(&b) {
                assert!((x / 2.0 - y).abs() <= 1e-6 * scale, "{x} / 2 vs {y}");
            }
            self.compared += 1;
        }
    }

    #[test]
    fn batch_dice_on_replicas_trims_to_whole_steps() {
        // 11 images on 2 replicas would give shares of 5 and 6: keep 10.
        assert_eq!(whole_steps(11, 2, true), Some(10));
        assert_eq!(whole_steps(12, 3, true), None);
        // Without batch Dice, or on one replica, nothing is trimmed.
        assert_eq!(whole_steps(11, 2, false), None);
        assert_eq!(whole_steps(11, 1, true), None);
        let mut c = config(1).with_batch_dice(true);
        assert!(replica_group(&c).is_none(), "one replica needs no group");
        c.replicas = Some(3);
        let group = replica_group(&c).expect("a group");
        assert_eq!((group.replicas(), group.gradient_scale()), (3, 3.0));
    }

    /// With batch Dice on two replicas (each a clone of the model on half the batch, on a
    /// thread of its own, as burn-train's multi-device strategy runs them), the replicas'
    /// gradients add up to one model's gradient on the whole batch, for the losses whose Dice
    /// part is batch Dice (batch norm off: it normalizes each replica's batch on its own).
    #[test]
    fn batch_dice_replicas_add_up_to_one_device() {
        type A = burn_autodiff::Autodiff<burn_flex::Flex>;
        let device = Default::default();
        <A as Backend>::seed(&device, 5);
        for loss in [LossKind::Dice, LossKind::DiceCe, LossKind::Tversky] {
            let mut config = config(1).with_batch_dice(true);
            config.loss = loss;
            config.model = UNetConfig::new(3)
                .with_depth(1)
                .with_base_channels(4)
                .with_batch_norm(false);
            let one = SegModel::<A>::new(&config, &device);
            config.replicas = Some(2);
            let two = SegModel {
                replicas: 2,
                group: replica_group(&config),
                ..one.clone()
            };
            let images = Tensor::<A, 4>::random(
                [4, 1, 8, 8],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            // Class 2 only in the second half: the first replica alone has an empty class.
            let labels = Tensor::<A, 4, Int>::from_data(
                burn::tensor::TensorData::new(
                    (0..256)
                        .map(|i| {
                            if i >= 128 {
                                i64::from(i % 5 == 0) * 2
                            } else {
                                i64::from(i % 3 == 0)
                            }
                        })
                        .collect(),
                    [4, 1, 8, 8],
                ),
                &device,
            );
            // A fork per step, as burn-train's workers take one (same parameter ids, a graph
            // of its own).
            let step = |model: &SegModel<A>, start: usize, len: usize| {
                let batch = SegBatch {
                    images: images.clone().narrow(0, start, len),
                    labels: labels.clone().narrow(0, start, len),
                };
                TrainStep::step(&model.clone().fork(&device), batch).grads
            };
            let whole = step(&one, 0, 4);
            let halves = std::thread::scope(|scope| {
                let first = scope.spawn(|| step(&two, 0, 2));
                let second = step(&two, 2, 2);
                [first.join().unwrap(), second]
            });
            let mut added = AddUp {
                whole,
                halves,
                compared: 0,
                worst: 0.0,
            };
            one.visit(&mut added);
            assert!(
                added.compared >= 5,
                "{loss:?}: {} parameters",
                added.compared
            );
            assert!(
                added.worst <= 1e-5,
                "{loss:?}: worst error {:.2e}",
                added.worst
            );
        }
    }

    /// The worst error of the replicas' added gradients against the whole batch's, relative to
    /// the largest component of each parameter's gradient.
    struct AddUp {
        whole: burn::optim::GradientsParams,
        halves: [burn::optim::GradientsParams; 2],
        compared: usize,
        worst: f32,
    }

    impl<B: Backend> burn::module::ModuleVisitor<B> for AddUp {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            type Inner = burn_flex::Flex;
            let read = |g: &burn::optim::GradientsParams| {
                g.get::<Inner, D>(param.id)
                    .map(|t| t.into_data().to_vec::<f32>().unwrap())
            };
            let (Some(whole), Some(a), Some(b)) = (
                read(&self.whole),
                read(&self.halves[0]),
                read(&self.halves[1]),
            ) else {
                return;
            };
            let scale = whole.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "a zero gradient proves nothing");
            for ((w, a), b) in whole.iter().zip(&a).zip(&b) {
                self.worst = self.worst.max((w - (a + b)).abs() / scale);
            }
            self.compared += 1;
        }
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
