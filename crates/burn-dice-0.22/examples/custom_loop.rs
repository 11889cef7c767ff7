//! burn-dice 0.2 on burn 0.22 in a hand-written training loop: a small convolutional network
//! learns the embedded `shapes` data (ellipses, rectangles, triangles on noisy backgrounds,
//! the U-Net example's default data set) with `DiceCELoss`, and prints the validation Dice
//! (`compute_dice`, foreground classes) after each epoch. No burn-train.
//!
//! ```sh
//! cargo run --release --manifest-path crates/burn-dice-0.22/Cargo.toml --example custom_loop
//! ```
//!
//! Arguments: `[epochs] [steps per epoch]` (default 12 and 40: about 15 s in release on 2
//! cores, validation Dice from 0 to about 0.4; the U-Net example gets 0.9 on this data).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::interpolate::{Interpolate2d, Interpolate2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_dice::metric::{compute_dice, EmptyPolicy, Prediction};
use burn_dice::{Activation, DiceCELossConfig, DiceLossConfig};

/// Image side.
const SIZE: usize = 32;
/// Images per training batch.
const BATCH: usize = 16;
/// Seed of the data set.
const SEED: u64 = 7;

/// A two-level encoder-decoder (a very small U-Net): full-resolution features, a
/// quarter-resolution context path with dilated convolutions, upsampled and joined to the
/// full-resolution features, then a 1×1 classifier.
#[derive(Module, Debug)]
pub struct Net {
    full: Conv2d,
    down: Conv2d,
    context1: Conv2d,
    context2: Conv2d,
    pool: MaxPool2d,
    up: Interpolate2d,
    join: Conv2d,
    head: Conv2d,
    relu: Relu,
}

impl Net {
    /// A network for `classes` classes on `device`.
    pub fn new(classes: usize, device: &Device) -> Self {
        let conv = |i, o, d: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_dilation([d, d])
                // `d` on each side keeps the size of a dilated 3×3 convolution.
                .with_padding(PaddingConfig2d::Explicit(d, d, d, d))
                .init(device)
        };
        Self {
            full: conv(1, 16, 1),
            down: conv(16, 32, 1),
            context1: conv(32, 32, 2),
            context2: conv(32, 32, 4),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            up: Interpolate2dConfig::new()
                .with_scale_factor(Some([4.0, 4.0]))
                .init(),
            join: conv(48, 32, 1),
            head: Conv2dConfig::new([32, classes], [1, 1]).init(device),
            relu: Relu::new(),
        }
    }

    /// Logits `[batch, classes, h, w]` of images `[batch, 1, h, w]` (`h`, `w` multiples of 4).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let full = self.relu.forward(self.full.forward(x));
        let x = self.pool.forward(full.clone());
        let x = self.pool.forward(self.relu.forward(self.down.forward(x)));
        let x = self.relu.forward(self.context1.forward(x));
        let x = self.relu.forward(self.context2.forward(x));
        let x = Tensor::cat(vec![full, self.up.forward(x)], 1);
        self.head.forward(self.relu.forward(self.join.forward(x)))
    }
}

/// Images `first..first + n` of split `stream` (1: training, 2: validation) as tensors.
pub fn batch(stream: u64, first: usize, n: usize, device: &Device) -> (Tensor<4>, Tensor<4, Int>) {
    let images: Vec<shapes::Image> = (first..first + n)
        .map(|i| shapes::image(SIZE, SEED, stream, i))
        .collect();
    let x: Vec<f32> = images.iter().flat_map(|i| i.image.clone()).collect();
    let y: Vec<i64> = images.iter().flat_map(|i| i.mask.clone()).collect();
    (
        Tensor::from_data(TensorData::new(x, [n, 1, SIZE, SIZE]), device),
        Tensor::from_data(TensorData::new(y, [n, 1, SIZE, SIZE]), device),
    )
}

/// Trains for `epochs` of `steps` batches on `device` (with autodiff) and returns the
/// validation Dice after each epoch (mean over 64 images of the mean over the foreground
/// classes present).
pub fn train(epochs: usize, steps: usize, device: &Device) -> Vec<f64> {
    device.seed(1);
    let classes = shapes::CLASSES.len();
    let mut model = Net::new(classes, device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = DiceCELossConfig::new()
        .with_dice(
            DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_include_background(false),
        )
        .init(device);
    let plain = device.clone().without_autodiff();
    let (valid_x, valid_y) = batch(2, 0, 64, &plain);
    let mut scores = Vec::new();
    for epoch in 1..=epochs {
        let mut total = 0.0;
        for step in 0..steps {
            let (x, y) = batch(1, ((epoch - 1) * steps + step) * BATCH, BATCH, device);
            let loss = loss_fn.forward(model.forward(x), y);
            total += loss.clone().into_scalar::<f64>() / steps as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(5e-3, model, grads);
        }
        // Validation without autodiff.
        let logits = model.valid().forward(valid_x.clone());
        let pred = Prediction::Argmax.apply(logits);
        let dice = compute_dice(pred, valid_y.clone(), classes, false, EmptyPolicy::NaN);
        let dice = nan_mean(&dice.into_data().convert::<f64>().try_into_vec().unwrap());
        println!("epoch {epoch}: train DiceCE loss {total:.4}, validation Dice {dice:.4}");
        scores.push(dice);
    }
    scores
}

/// The mean of the values that are not NaN (classes absent from an image's ground truth).
fn nan_mean(values: &[f64]) -> f64 {
    let kept: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    kept.iter().sum::<f64>() / kept.len().max(1) as f64
}

#[allow(dead_code)] // `tests/example.rs` includes this file and calls `train` itself.
fn main() {
    let mut args = std::env::args().skip(1).map(|a| {
        a.parse::<usize>()
            .unwrap_or_else(|_| panic!("expected `[epochs] [steps per epoch]`, got {a:?}"))
    });
    let epochs = args.next().unwrap_or(12);
    let steps = args.next().unwrap_or(40);
    train(epochs, steps, &Device::flex().autodiff());
}
