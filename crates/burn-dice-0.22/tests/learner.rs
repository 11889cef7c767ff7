//! `DiceMetric` inside burn-train 0.22: a tiny model trained for one epoch with
//! `SupervisedTraining` on burn-flex; the Dice values the learner logged for its validation
//! batches must equal an independent computation (plain loops over the argmax of the logits of
//! the model the learner returns, which is the model it validated). Under burn-train's
//! multi-device strategy the training metrics (per sample and global) must log what one device
//! logs for the same data.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::metric::LossMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, SupervisedTraining, TrainOutput,
    TrainStep,
};
use burn_dice::metric::{DiceMetric, Prediction, SegmentationOutput};
use burn_dice::{Activation, DiceCELossConfig, DiceLossConfig};

const CLASSES: usize = 3;
const SIZE: usize = 8;

#[derive(Module, Debug)]
struct Tiny {
    conv: Conv2d,
}

impl Tiny {
    fn new(device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([1, CLASSES], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
        }
    }

    fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        self.conv.forward(images)
    }

    fn output(&self, batch: SegBatch) -> SegmentationOutput {
        let logits = self.forward(batch.images);
        let loss = DiceCELossConfig::new()
            .with_dice(
                DiceLossConfig::new()
                    .with_activation(Activation::Softmax)
                    .with_include_background(false),
            )
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        SegmentationOutput::new(loss, logits, batch.labels, Prediction::Argmax, None)
    }
}

#[derive(Clone, Debug)]
struct SegBatch {
    images: Tensor<4>,
    labels: Tensor<4, Int>,
}

impl TrainStep for Tiny {
    type Input = SegBatch;
    type Output = SegmentationOutput;

    fn step(&self, batch: SegBatch) -> TrainOutput<SegmentationOutput> {
        let output = self.output(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Tiny {
    type Input = SegBatch;
    type Output = SegmentationOutput;

    fn step(&self, batch: SegBatch) -> SegmentationOutput {
        self.output(batch)
    }
}

/// An image whose intensity encodes the class (with noise), and its labels.
#[derive(Clone, Debug)]
struct Item {
    image: Vec<f32>,
    labels: Vec<i64>,
}

fn items(n: usize, seed: u64) -> Vec<Item> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    (0..n)
        .map(|k| {
            let labels: Vec<i64> = (0..SIZE * SIZE)
                .map(|p| {
                    let (r, c) = (p / SIZE, p % SIZE);
                    // Sample 0 of the validation set has no class 2.
                    if r < 3 + k % 3 {
                        0
                    } else if c < SIZE / 2 || k == 0 {
                        1
                    } else {
                        2
                    }
                })
                .collect();
            let image = labels
                .iter()
                .map(|&l| l as f32 + 0.8 * (next() - 0.5))
                .collect();
            Item { image, labels }
        })
        .collect()
}

#[derive(Clone, Default)]
struct SegBatcher;

impl Batcher<Item, SegBatch> for SegBatcher {
    fn batch(&self, items: Vec<Item>, device: &Device) -> SegBatch {
        let n = items.len();
        let image: Vec<f32> = items.iter().flat_map(|i| i.image.clone()).collect();
        let labels: Vec<i64> = items.iter().flat_map(|i| i.labels.clone()).collect();
        SegBatch {
            images: Tensor::from_data(TensorData::new(image, [n, 1, SIZE, SIZE]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n, 1, SIZE, SIZE]), device),
        }
    }
}

/// The text of `metric`'s log for one epoch of `split`, and its path.
fn log_text(dir: &Path, split: &str, epoch: usize, metric: &str) -> (String, std::path::PathBuf) {
    let path = dir
        .join(split)
        .join(format!("epoch-{epoch}"))
        .join(format!("{}.log", metric.replace(' ', "_")));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (text, path)
}

/// The logged per-batch entries of `metric` (value, count) for one epoch of validation.
fn logged(dir: &Path, epoch: usize, metric: &str) -> Vec<(f64, usize)> {
    logged_of(dir, "valid", epoch, metric)
}

/// The logged per-batch entries of `metric` (value, count) for one epoch of `split`.
fn logged_of(dir: &Path, split: &str, epoch: usize, metric: &str) -> Vec<(f64, usize)> {
    let (text, _) = log_text(dir, split, epoch, metric);
    // Per-batch entries are `value,count`; the epoch's `value,final` is read by `logged_final`.
    text.lines()
        .filter(|line| !line.ends_with(",final"))
        .map(|line| {
            let (v, n) = line.split_once(',').expect("value,count");
            (v.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

/// The epoch's final value of `metric` (its `value,final` entry).
fn logged_final(dir: &Path, epoch: usize, metric: &str) -> f64 {
    logged_final_of(dir, "valid", epoch, metric)
}

/// The epoch's final value of `metric` in `split`.
fn logged_final_of(dir: &Path, split: &str, epoch: usize, metric: &str) -> f64 {
    let (text, path) = log_text(dir, split, epoch, metric);
    let line = text
        .lines()
        .find_map(|line| line.strip_suffix(",final"))
        .unwrap_or_else(|| panic!("{path:?}: no final entry"));
    line.parse().unwrap()
}

/// Mean over samples of the mean over the foreground classes present in the sample, with plain
/// loops over the argmax of the logits.
fn independent_dice(
    logits: &[f32],
    labels: &[i64],
    n: usize,
    class: Option<usize>,
) -> (f64, usize) {
    let px = SIZE * SIZE;
    let mut per_sample = Vec::new();
    for s in 0..n {
        let pred: Vec<usize> = (0..px)
            .map(|p| {
                (0..CLASSES)
                    .max_by(|&a, &b| {
                        let va = logits[(s * CLASSES + a) * px + p];
                        let vb = logits[(s * CLASSES + b) * px + p];
                        va.partial_cmp(&vb).unwrap().then(b.cmp(&a))
                    })
                    .unwrap()
            })
            .collect();
        let mut scores = Vec::new();
        for c in 1..CLASSES {
            if class.is_some_and(|k| k != c) {
                continue;
            }
            let (mut i, mut a, mut b) = (0.0, 0.0, 0.0);
            for p in 0..px {
                let (is_p, is_t) = (pred[p] == c, labels[s * px + p] == c as i64);
                i += f64::from(u8::from(is_p && is_t));
                a += f64::from(u8::from(is_p));
                b += f64::from(u8::from(is_t));
            }
            if b > 0.0 {
                scores.push(2.0 * i / (a + b));
            }
        }
        if !scores.is_empty() {
            per_sample.push(scores.iter().sum::<f64>() / scores.len() as f64);
        }
    }
    let n = per_sample.len();
    (per_sample.iter().sum::<f64>() / n.max(1) as f64, n)
}

#[test]
fn logged_dice_equals_an_independent_computation() {
    let device = Device::flex().autodiff();
    let dir = std::env::temp_dir().join(format!("burn-dice-022-learner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let valid_items = items(5, 2);
    let train = DataLoaderBuilder::new(SegBatcher)
        .batch_size(4)
        .shuffle(1)
        .set_device(device.clone())
        .build(InMemDataset::new(items(12, 1)));
    let valid = DataLoaderBuilder::new(SegBatcher)
        .batch_size(2)
        .set_device(device.clone())
        .build(InMemDataset::new(valid_items.clone()));
    let training = SupervisedTraining::new(&dir, train, valid)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_valid_numeric(DiceMetric::new().with_include_background(false))
        .metric_valid_numeric(DiceMetric::per_class(2))
        .num_epochs(1)
        .summary();
    let model = Tiny::new(&device);
    let result = training.launch(Learner::new(model, AdamConfig::new().init(), 5e-2));
    let model = result.model;

    let dice = logged(&dir, 1, "Dice");
    let class2 = logged(&dir, 1, "Dice[class_2]");
    assert_eq!(dice.len(), 3, "3 validation batches");
    let (mut sum, mut count) = (0.0, 0usize);
    for (b, chunk) in valid_items.chunks(2).enumerate() {
        let batch: SegBatch = SegBatcher.batch(chunk.to_vec(), &device);
        let logits = model
            .forward(batch.images)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let labels: Vec<i64> = chunk.iter().flat_map(|i| i.labels.clone()).collect();
        let (v, n) = independent_dice(&logits, &labels, chunk.len(), None);
        assert_eq!(dice[b].1, n, "batch {b}: samples");
        assert!(
            (dice[b].0 - v).abs() < 1e-9,
            "batch {b}: {} vs {v}",
            dice[b].0
        );
        let (v2, n2) = independent_dice(&logits, &labels, chunk.len(), Some(2));
        assert_eq!(class2[b].1, n2, "batch {b}: class 2 samples");
        if n2 > 0 {
            assert!(
                (class2[b].0 - v2).abs() < 1e-9,
                "class 2: {} vs {v2}",
                class2[b].0
            );
        }
        sum += v * n as f64;
        count += n;
    }
    let epoch = sum / count as f64;
    let final_value = logged_final(&dir, 1, "Dice");
    assert!(
        (final_value - epoch).abs() < 1e-9,
        "the epoch's Dice {final_value} is the sample-weighted mean of its batches, {epoch}"
    );
    println!("logged validation Dice {epoch:.4}");
    assert!(dice.iter().all(|(v, _)| (0.0..=1.0).contains(v)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One epoch of training at learning rate 0 (the model does not move) on `devices` burn-flex
/// devices: the training split's final values of the three Dice metrics, per sample, global,
/// and global of class 2, and the number of batches logged.
fn train_metrics_on(model: Tiny, devices: usize) -> (Vec<f64>, usize) {
    let device = Device::flex().autodiff();
    let dir = std::env::temp_dir().join(format!(
        "burn-dice-022-learner-{devices}-devices-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let train = DataLoaderBuilder::new(SegBatcher)
        .batch_size(2)
        .set_device(device.clone())
        .build(InMemDataset::new(items(12, 1)));
    let valid = DataLoaderBuilder::new(SegBatcher)
        .batch_size(2)
        .set_device(device.clone())
        .build(InMemDataset::new(items(2, 2)));
    let names = ["Dice", "Global Dice", "Global Dice[class 2]"];
    let mut training = SupervisedTraining::new(&dir, train, valid)
        .metric_train_numeric(DiceMetric::new().with_include_background(false))
        .metric_train_numeric(DiceMetric::new().with_include_background(false).global())
        .metric_train_numeric(DiceMetric::per_class(2).global())
        .num_epochs(1)
        .summary();
    if devices > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::multi(
                vec![Device::flex(); devices],
                MultiDeviceOptim::OptimMainDevice,
            )
            .into(),
        );
    }
    let _ = training.launch(Learner::new(model, AdamConfig::new().init(), 0.0));
    let values = names
        .iter()
        .map(|name| logged_final_of(&dir, "train", 1, name))
        .collect();
    let batches = logged_of(&dir, "train", 1, "Dice").len();
    let _ = std::fs::remove_dir_all(&dir);
    (values, batches)
}

#[test]
fn dice_metrics_under_the_multi_device_strategy_equal_one_device() {
    let device = Device::flex().autodiff();
    let model = Tiny::new(&device);
    // Parameters are initialized lazily, each clone on its own (other random weights): a
    // forward pass initializes them, and the clones then share them.
    let _ = model.forward(Tensor::zeros([1, 1, SIZE, SIZE], &device));
    let (one, batches_one) = train_metrics_on(model.clone(), 1);
    let (two, batches_two) = train_metrics_on(model, 2);
    // 12 samples in batches of 2: 6 batches on one device; on two, each replica gets 6
    // samples, 3 batches, and every replica's batch reaches the one metric.
    assert_eq!((batches_one, batches_two), (6, 6));
    for (k, name) in ["Dice", "Global Dice", "Global Dice[class 2]"]
        .iter()
        .enumerate()
    {
        let (a, b) = (one[k], two[k]);
        println!("{name}: one device {a:.6}, two devices {b:.6}");
        assert!((0.0..=1.0).contains(&a), "{name}: {a}");
        assert!(
            (a - b).abs() < 1e-12,
            "{name}: one device {a}, two devices {b}"
        );
    }
}
