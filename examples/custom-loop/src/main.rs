//! `DiceLoss` in a hand-written training loop: forward, loss, `backward`, `GradientsParams`,
//! optimizer step, and the validation Dice per epoch. No burn-train.
//!
//! `cargo run --release -p custom-loop`

use burn::module::{AutodiffModule, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Int, Tensor};
use burn_dice::metric::{compute_dice, EmptyPolicy, Prediction};
use burn_dice::{Activation, DiceLossConfig};

type B = burn_autodiff::Autodiff<burn_flex::Flex>;

const SIZE: usize = 32;

/// Three 3×3 convolutions: enough to find bright discs on a noisy background.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    c1: Conv2d<B>,
    c2: Conv2d<B>,
    c3: Conv2d<B>,
    relu: Relu,
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Self {
            c1: conv(1, 16),
            c2: conv(16, 16),
            c3: conv(16, 2),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.relu.forward(self.c1.forward(x));
        let x = self.relu.forward(self.c2.forward(x));
        self.c3.forward(x)
    }
}

/// A batch of noisy images with one disc each, and the disc masks as class indices.
fn batch<B: Backend>(n: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4, Int>) {
    let centre = Tensor::<B, 4>::random([n, 2, 1, 1], Distribution::Uniform(8.0, 24.0), device);
    let radius = Tensor::<B, 4>::random([n, 1, 1, 1], Distribution::Uniform(3.0, 8.0), device);
    let ys = Tensor::<B, 1, Int>::arange(0..SIZE as i64, device)
        .float()
        .reshape([1, 1, SIZE, 1]);
    let xs = Tensor::<B, 1, Int>::arange(0..SIZE as i64, device)
        .float()
        .reshape([1, 1, 1, SIZE]);
    let dy = ys - centre.clone().narrow(1, 0, 1);
    let dx = xs - centre.narrow(1, 1, 1);
    let inside = (dy.powi_scalar(2) + dx.powi_scalar(2)).lower_equal(radius.powi_scalar(2));
    let noise = Tensor::random([n, 1, SIZE, SIZE], Distribution::Normal(0.0, 0.35), device);
    (inside.clone().float().mul_scalar(0.8) + noise, inside.int())
}

fn train<A: AutodiffBackend>(device: &A::Device) {
    A::seed(device, 1);
    let mut model = Net::<A>::new(device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = DiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .with_include_background(false)
        .init::<A>(device);
    let (valid_x, valid_y) = batch::<A::InnerBackend>(64, device);
    for epoch in 1..=8 {
        let mut total = 0.0;
        for _ in 0..20 {
            let (x, y) = batch::<A>(16, device);
            let loss = loss_fn.forward(model.forward(x), y);
            total += loss.clone().into_scalar().elem::<f64>() / 20.0;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(5e-3, model, grads);
        }
        // Validation on the inner backend: no autodiff graph.
        let logits = model.valid().forward(valid_x.clone());
        let pred = Prediction::Argmax.apply(logits);
        let dice = compute_dice(pred, valid_y.clone(), 2, false, EmptyPolicy::NaN).mean();
        let dice: f64 = dice.into_scalar().elem();
        println!("epoch {epoch}: train Dice loss {total:.4}, validation Dice {dice:.4}");
    }
}

fn main() {
    train::<B>(&Default::default());
}
