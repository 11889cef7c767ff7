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
    /// Whether the loss checked its inputs (`check_inputs`).
    pub check_inputs: bool,
    /// Median training step (forward, loss, backward, Adam) with the loss read back after each
    /// step, ms.
    pub step_median_ms: f64,
    /// Fastest such step, ms.
    pub step_min_ms: f64,
    /// A training step when the steps are queued back to back and the device is waited for
    /// once at the end (a loop that reads nothing back per step), ms.
    pub step_pipelined_ms: f64,
    /// The loss alone (forward and backward, at the same shape, queued back to back), ms.
    pub loss_ms: f64,
    /// One inference forward pass, ms.
    pub inference_ms: f64,
}

/// Runs the benchmark and prints the median step time.
pub fn run<B: AutodiffBackend>(args: &BenchArgs, device: &B::Device) -> Result<(), String> {
    let r = measure::<B>(args, device);
    println!(
        "reference U-Net ({} parameters), batch {:?}: training step median {:.1} ms (min {:.1} ms, \
         {} steps; {:.1} ms queued back to back, of which the loss {:.2} ms), inference {:.1} ms",
        r.params,
        r.shape,
        r.step_median_ms,
        r.step_min_ms,
        args.steps,
        r.step_pipelined_ms,
        r.loss_ms,
        r.inference_ms
    );
    Ok(())
}

/// Times `args.steps` training steps after 2 warm-up steps, with the loss's data checks on.
pub fn measure<B: AutodiffBackend>(args: &BenchArgs, device: &B::Device) -> BenchResult {
    measure_with::<B>(args, true, device)
}

/// [`measure`] with the loss's `check_inputs` set to `check_inputs`.
pub fn measure_with<B: AutodiffBackend>(
    args: &BenchArgs,
    check_inputs: bool,
    device: &B::Device,
) -> BenchResult {
    B::seed(device, 0);
    let mut model = UNetConfig::new(1).init::<B>(device);
    let params = model.num_params();
    let mut optim = AdamConfig::new().init();
    let loss = DiceLossConfig::new()
        .with_activation(Activation::Sigmoid)
        .with_check_inputs(check_inputs)
        .init::<B>(device);
    let shape = [args.batch_size, 1, args.size, args.size];
    let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let t = Tensor::<B, 4>::random(shape, Distribution::Bernoulli(0.3), device);
    let mut step = |model: crate::model::UNet<B>| {
        let l = loss.forward(model.forward(x.clone()), t.clone());
        let grads = GradientsParams::from_grads(l.backward(), &model);
        (optim.step(1e-3, model, grads), l)
    };
    let mut times = Vec::new();
    for i in 0..args.steps + 2 {
        let start = Instant::now();
        let (next, l) = step(model);
        model = next;
        // Wait for the device: read one number back.
        let _ = l.into_scalar();
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    B::sync(device).expect("sync");
    let start = Instant::now();
    for _ in 0..args.steps {
        model = step(model).0;
    }
    B::sync(device).expect("sync");
    let step_pipelined_ms = start.elapsed().as_secs_f64() * 1e3 / args.steps as f64;
    // The loss alone on logits of the same shape.
    let logits = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let loss_step = || {
        let z = logits.clone().require_grad();
        let grads = loss.forward(z.clone(), t.clone()).backward();
        drop(z.grad(&grads));
    };
    loss_step();
    B::sync(device).expect("sync");
    let start = Instant::now();
    for _ in 0..args.steps {
        loss_step();
    }
    B::sync(device).expect("sync");
    let loss_ms = start.elapsed().as_secs_f64() * 1e3 / args.steps as f64;
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
        check_inputs,
        step_median_ms: times[times.len() / 2],
        step_min_ms: times[0],
        step_pipelined_ms,
        loss_ms,
        inference_ms: inference,
    }
}
