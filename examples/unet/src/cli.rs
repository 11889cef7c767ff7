//! The command line: `train`, `eval`, `predict` and `bench`, on the backend of `--backend`.

use std::path::PathBuf;

use burn_dice::processes::{Processes, ProcessesConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::data::folder::Folder;
use crate::data::mri::{Mri, MriTask, DEFAULT_DIR};
use crate::data::shapes::Shapes;
use crate::data::SegmentationData;
use crate::model::Upsampling;
use crate::training::{LossKind, LrSchedule};

/// U-Net segmentation with burn-dice.
#[derive(Parser, Debug)]
#[command(name = "unet", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Backend: flex (CPU, default: im2col + GEMM convolutions), ndarray (CPU) or wgpu (GPU,
    /// needs the `wgpu` cargo feature).
    #[arg(long, value_enum, default_value_t = BackendKind::Flex, global = true)]
    pub backend: BackendKind,
}

/// The burn backend.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-flex (CPU).
    Flex,
    /// burn-ndarray (CPU).
    Ndarray,
    /// burn-wgpu (GPU).
    Wgpu,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a U-Net; writes config.json, checkpoints, metrics.csv, curves.png, predictions/.
    Train(TrainArgs),
    /// Per-class Dice of a trained model on a data set's validation split.
    Eval(EvalArgs),
    /// Segment image files: mask and overlay PNGs.
    Predict(PredictArgs),
    /// Time training steps of the reference U-Net (1,940,817 parameters) at [8, 1, 128, 128].
    Bench(BenchArgs),
}

/// Which data set.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Synthetic shapes, embedded (no file needed).
    Shapes,
    /// Colin27 brain MRI from Debian's mricron-data.
    Mri,
    /// Your own images and masks.
    Folder,
}

/// The MRI task.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskArg {
    /// Brain extraction (background / brain).
    Brain,
    /// AAL regions grouped into 3 classes + background.
    Regions,
}

/// Data set options.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data set.
    #[arg(long, value_enum, default_value_t = DataKind::Shapes)]
    pub data: DataKind,
    /// Image side in pixels (a multiple of 2^depth). Default: 64 for shapes, 128 otherwise.
    #[arg(long)]
    pub size: Option<usize>,
    /// shapes: number of training images.
    #[arg(long, default_value_t = 2048)]
    pub train_images: usize,
    /// shapes: number of validation images.
    #[arg(long, default_value_t = 256)]
    pub valid_images: usize,
    /// mri: task.
    #[arg(long, value_enum, default_value_t = TaskArg::Brain)]
    pub task: TaskArg,
    /// mri: folder of ch2.nii.gz, ch2bet.nii.gz and aal.nii.gz.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub mri_dir: PathBuf,
    /// folder: images.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// folder: masks (same file stems).
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// folder: number of classes, background included (default: largest label + 1).
    #[arg(long)]
    pub classes: Option<usize>,
    /// folder: label value left out of loss and metric.
    #[arg(long)]
    pub ignore_index: Option<usize>,
    /// folder: fraction of the pairs held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub valid_fraction: f64,
    /// folder: leave out the files that cannot be used (unpaired, unreadable, of another size,
    /// labels out of range), listing each in a warning, instead of failing.
    #[arg(long)]
    pub skip_bad_files: bool,
    /// Seed of the data set and the training.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl DataArgs {
    /// The side of the images.
    pub fn image_size(&self) -> usize {
        self.size.unwrap_or(if self.data == DataKind::Shapes {
            64
        } else {
            128
        })
    }

    /// Builds the data set.
    pub fn build(&self) -> Result<Box<dyn SegmentationData>, String> {
        let size = self.image_size();
        Ok(match self.data {
            DataKind::Shapes => Box::new(Shapes {
                size,
                train: self.train_images,
                valid: self.valid_images,
                seed: self.seed,
            }),
            DataKind::Mri => Box::new(Mri {
                dir: self.mri_dir.clone(),
                task: match self.task {
                    TaskArg::Brain => MriTask::Brain,
                    TaskArg::Regions => MriTask::Regions,
                },
                size,
            }),
            DataKind::Folder => Box::new(Folder {
                images: self
                    .images
                    .clone()
                    .ok_or("--data folder needs --images DIR")?,
                masks: self
                    .masks
                    .clone()
                    .ok_or("--data folder needs --masks DIR")?,
                size,
                classes: self.classes,
                ignore_index: self.ignore_index,
                valid_fraction: self.valid_fraction,
                skip_bad_files: self.skip_bad_files,
            }),
        })
    }
}

/// `train` options.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Data set options.
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder.
    #[arg(long, default_value = "runs/unet")]
    pub out: PathBuf,
    /// Continue from the last checkpoint in --out (with its config.json), up to --epochs; the
    /// learning-rate schedule keeps the resumed run's length.
    #[arg(long)]
    pub resume: bool,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Batch size of each replica (see --replicas).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Adam learning rate (the peak of the cosine schedule; the default is tuned for steps of
    /// 2 replicas × 8 images).
    #[arg(long, default_value_t = 4.5e-3)]
    pub lr: f64,
    /// Learning-rate schedule over the run.
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
    pub lr_schedule: LrSchedule,
    /// Epochs (fractions allowed) over which the learning rate first rises linearly to --lr
    /// (0: none; on the shapes default one epoch of warm-up did not help: BENCHMARKS.md).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// Loss.
    #[arg(long, value_enum, default_value_t = LossKind::DiceCe)]
    pub loss: LossKind,
    /// U-Net depth (down-sampling steps).
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Channels of the first level (8 by default: on the shapes data set, per second of CPU
    /// time, 8 learns faster than the reference model's 16).
    #[arg(long, default_value_t = 8)]
    pub base_channels: usize,
    /// Batch normalization after each convolution (on by default: `--batch-norm false` gives
    /// the plain reference architecture).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub batch_norm: bool,
    /// Decoder upsampling.
    #[arg(long, value_enum, default_value_t = UpsamplingArg::Transposed)]
    pub upsampling: UpsamplingArg,
    /// Augmentation (flips, ±10° rotations, ±8 % shifts): on by default for mri and folder.
    #[arg(long)]
    pub augment: Option<bool>,
    /// Data loader workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Data-parallel replicas of the training step, each a thread with its own --batch-size
    /// samples per step (a step sees replicas × batch-size, and the gradients are averaged).
    /// Default: 2 on the CPU backends (1 on a single-core machine), where burn-flex runs most
    /// of a step on one thread; 1 on wgpu.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Batch Dice (nnU-Net's): the loss's statistics summed over the whole step before the
    /// ratio, across the replicas too (burn-dice's ReplicaGroup), instead of one Dice per image.
    /// Off by default, as in MONAI (one Dice per image weighs every image alike); on, small or
    /// absent structures weigh by their share of the whole step. With --replicas > 1 the
    /// training set is trimmed to a multiple of the replicas, so that every replica makes
    /// every step.
    #[arg(long)]
    pub batch_dice: bool,
    /// Processes training one model together (data parallelism across processes or
    /// machines): each trains on its share of the training set, and every step sums the
    /// processes' gradients (and, with --batch-dice, the loss's statistics) through the
    /// coordinator. Start one process per rank, each with its own --out.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// This process's rank, 0..--nodes; rank 0 is the coordinator.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// The coordinator's host:port: rank 0 listens on exactly that address (127.0.0.1: this
    /// machine only; give rank 0 0.0.0.0:PORT to listen on every interface), the others
    /// connect to it.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub coordinator: String,
    /// Seconds a process waits for the others (to join, and at every step) before it fails
    /// with an error naming the step.
    #[arg(long, default_value_t = 120.0)]
    pub node_timeout: f64,
}

impl TrainArgs {
    /// The processes of `--nodes`, joined (`None` for one process).
    ///
    /// # Errors
    /// When --nodes, --node-rank, --coordinator or --node-timeout is wrong, or the processes
    /// fail to join (the message names the ranks missing).
    pub fn join_nodes(&self) -> Result<Option<std::sync::Arc<Processes>>, String> {
        if self.nodes == 0 {
            return Err("--nodes must be at least 1, got 0".into());
        }
        if self.node_rank >= self.nodes {
            return Err(format!(
                "--node-rank must be in 0..{} (--nodes {}), got {}",
                self.nodes, self.nodes, self.node_rank
            ));
        }
        if !(self.node_timeout.is_finite() && self.node_timeout > 0.0) {
            return Err(format!(
                "--node-timeout must be a positive number of seconds, got {}",
                self.node_timeout
            ));
        }
        if self.nodes == 1 {
            return Ok(None);
        }
        let config = ProcessesConfig::new(self.nodes, self.node_rank, self.coordinator.clone())
            .with_timeout(std::time::Duration::from_secs_f64(self.node_timeout));
        config.check().map_err(|e| format!("--coordinator: {e}"))?;
        println!(
            "node {} of {}: joining the coordinator at {} ...",
            self.node_rank, self.nodes, self.coordinator
        );
        let processes = Processes::join(&config)?;
        println!(
            "node {} of {}: every node has joined",
            self.node_rank, self.nodes
        );
        Ok(Some(std::sync::Arc::new(processes)))
    }
}

/// The replicas a training run on `backend` gets when `--replicas` is not given.
pub fn default_replicas(backend: BackendKind) -> usize {
    match backend {
        BackendKind::Flex | BackendKind::Ndarray => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(2),
        BackendKind::Wgpu => 1,
    }
}

/// Decoder upsampling.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsamplingArg {
    /// Transposed convolution.
    Transposed,
    /// Bilinear + 1×1 convolution.
    Bilinear,
}

impl From<UpsamplingArg> for Upsampling {
    fn from(u: UpsamplingArg) -> Self {
        match u {
            UpsamplingArg::Transposed => Upsampling::Transposed,
            UpsamplingArg::Bilinear => Upsampling::Bilinear,
        }
    }
}

/// `eval` options.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Data set options (the validation split is evaluated).
    #[command(flatten)]
    pub data: DataArgs,
    /// The training run's output folder.
    #[arg(long, default_value = "runs/unet")]
    pub out: PathBuf,
    /// Evaluate the checkpoint of this epoch instead of the final model.
    #[arg(long)]
    pub epoch: Option<usize>,
    /// Where to write the JSON table (default: <out>/eval.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `predict` options.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// The training run's output folder.
    #[arg(long, default_value = "runs/unet")]
    pub out: PathBuf,
    /// Where to write the masks and overlays.
    #[arg(long, default_value = "predictions")]
    pub output: PathBuf,
    /// Image files (PNG or JPEG).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// `bench` options.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Image side.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
}
