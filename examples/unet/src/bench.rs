//! `bench`: the training step of the reference U-Net (1 input and 1 output channel, depth 4,
//! 16 base channels: 1,940,817 parameters) at `[8, 1, 128, 128]`, as in
//! `shared/anchors/bench_unet.py`: forward, `DiceLoss` with sigmoid, backward, Adam (lr 1e-3).

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use burn_dice::{Activation, DiceLossConfig};

use crate::cli::BenchArgs;
use crate::model::UNetConfig;

/// Step timings of the reference U-Net.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// Parameters (1,940,817).
    pub params: usize,
    /// Input shape.
    pub shape: [usize; 4],
    /// Median training step (forward, loss, backward, Adam), ms.
    pub step_median_ms: f64,
    /// Fastest training step, ms.
    pub step_min_ms: f64,
    /// One inference forward pass, ms.
    pub inference_ms: f64,
}

/// Runs the benchmark and prints the median step time.
pub fn run<B: AutodiffBackend>(args: &BenchArgs, device: &B::Device) -> Result<(), String> {
    let r = measure::<B>(args, device);
    println!(
        "reference U-Net ({} parameters), batch {:?}: training step median {:.1} ms (min {:.1} ms, \
         {} steps), inference {:.1} ms",
        r.params, r.shape, r.step_median_ms, r.step_min_ms, args.steps, r.inference_ms
    );
    Ok(())
}

/// Times `args.steps` training steps after 2 warm-up steps.
pub fn measure<B: AutodiffBackend>(args: &BenchArgs, device: &B::Device) -> BenchResult {
    B::seed(device, 0);
    let mut model = UNetConfig::new(1).init::<B>(device);
    let params = model.num_params();
    let mut optim = AdamConfig::new().init();
    let loss = DiceLossConfig::new()
        .with_activation(Activation::Sigmoid)
        .init::<B>(device);
    let shape = [args.batch_size, 1, args.size, args.size];
    let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let t = Tensor::<B, 4>::random(shape, Distribution::Bernoulli(0.3), device);
    let mut times = Vec::new();
    for step in 0..args.steps + 2 {
        let start = Instant::now();
        let l = loss.forward(model.forward(x.clone()), t.clone());
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-3, model, grads);
        // Wait for the device: read one number back.
        let _ = l.into_scalar();
        if step >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let inference = {
        let m = model.valid();
        let xi = x.inner();
        let _ = m.forward(xi.clone()).sum().into_scalar();
        let start = Instant::now();
        let _ = m.forward(xi).sum().into_scalar();
        start.elapsed().as_secs_f64() * 1e3
    };
    times.sort_by(f64::total_cmp);
    BenchResult {
        params,
        shape,
        step_median_ms: times[times.len() / 2],
        step_min_ms: times[0],
        inference_ms: inference,
    }
}
