//! The loss benchmark of the GPU check: every loss of the family on the benchmark cases, with
//! the kernels and on the generic path, timed as a training loop sees it, with the bandwidth it
//! achieves and the extra device memory it takes. Run by `src/bin/gpu_check.rs` (on a GPU, or on
//! lavapipe as a proxy).
//!
//! Timing: after warm-up calls, `reps` calls are queued back to back and the device is waited
//! for once at the end (`Backend::sync`); the time per call is the total over `reps`. That is
//! the cost of the loss in a training loop, which reads nothing back per call. Each call
//! includes burn's own per-call overhead (autodiff graph, fusion stream).
//!
//! Bytes that must move: a forward pass has to read the input and the target once; a forward
//! and backward pass has to read them twice (the backward needs the forward's `[batch, class]`
//! result before it can start) and write the gradient once (the floor row, `x.mean()`, reads
//! the input once and writes its gradient). Achieved bandwidth = those bytes / time, reported
//! against the device's peak when it is known.

use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_dice::kernels::{generic_only, path};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig,
};
use serde::Serialize;

use crate::crosscheck::noise;

/// The losses benchmarked.
pub const LOSSES: [&str; 5] = ["Dice", "GeneralizedDice", "Tversky", "DiceCE", "DiceFocal"];

/// The floor every loss in burn pays, timed beside the losses: `x.mean()` (burn ops only), one
/// reduction over the input with its autodiff node and, backward, the input's gradient. What
/// a loss costs above it is its own work; what it costs below the bandwidth it should reach is
/// burn's per-call overhead (graph, fusion stream, launches), which a loss cannot remove.
pub const FLOOR: &str = "Floor";

/// A benchmark case.
#[derive(Debug, Clone, Copy)]
pub struct BenchCase {
    /// `a`..`d`.
    pub id: char,
    /// Its name in the reports.
    pub name: &'static str,
    /// `[batch, class, *spatial]`, spatial padded with 1s.
    pub shape: [usize; 5],
    /// Sigmoid with a dense target, or softmax with class indices.
    pub sigmoid: bool,
}

/// The cases: MONAI's three anchors, a larger 3-D case, and (not run by default) one large
/// enough that the memory traffic outweighs the per-call overhead on a data-centre GPU.
pub const CASES: [BenchCase; 5] = [
    BenchCase {
        id: 'a',
        name: "sigmoid dense [8,1,256,256]",
        shape: [8, 1, 256, 256, 1],
        sigmoid: true,
    },
    BenchCase {
        id: 'b',
        name: "softmax indices [8,4,128,128]",
        shape: [8, 4, 128, 128, 1],
        sigmoid: false,
    },
    BenchCase {
        id: 'c',
        name: "softmax indices 3-D [2,4,64,64,64]",
        shape: [2, 4, 64, 64, 64],
        sigmoid: false,
    },
    BenchCase {
        id: 'd',
        name: "softmax indices 3-D [2,4,128,128,128]",
        shape: [2, 4, 128, 128, 128],
        sigmoid: false,
    },
    BenchCase {
        id: 'e',
        name: "softmax indices 3-D [8,8,128,128,128]",
        shape: [8, 8, 128, 128, 128],
        sigmoid: false,
    },
];

/// One measured (loss, case, path).
#[derive(Debug, Clone, Serialize)]
pub struct LossTiming {
    /// The loss.
    pub loss: String,
    /// The case.
    pub case: String,
    /// `kernel` (what the backend runs by default) or `generic` (burn ops).
    pub path: String,
    /// Forward, ms per call.
    pub forward_ms: f64,
    /// Forward and backward, ms per call.
    pub forward_backward_ms: f64,
    /// Forward and backward, each call waited for on its own (`Backend::sync` after it): the
    /// fastest, median and slowest of `reps` calls, ms. Their spread tells a steady state from
    /// one disturbed by allocations or other work.
    pub forward_backward_synced_ms: [f64; 3],
    /// Bytes a forward and backward pass must move.
    pub bytes: u64,
    /// Achieved bandwidth of the forward and backward pass, GB/s.
    pub gb_per_s: f64,
    /// That bandwidth as a fraction of the device's peak, if known.
    pub peak_fraction: Option<f64>,
    /// Extra device memory of a forward and backward pass, in units of the logits' size: the
    /// memory in use after the forward pass (autodiff graph alive) or after the backward pass
    /// (gradients alive), whichever is larger, beyond what was in use before: a lower bound of
    /// the pass's peak (`None` where the backend does not report it).
    pub extra_memory_vs_logits: Option<f64>,
    /// The CubeCL kernels one forward call launches and one backward pass launches (`None`
    /// without the CubeCL kernels; 0 on the generic path).
    pub launches: Option<[u64; 2]>,
    /// The data-check read-backs (host submissions) of `reps` checked calls after the first,
    /// with the first call's own read-back not counted.
    pub readbacks: u64,
}

/// The loss `name` on a case's input and target.
fn loss_fn<B: AutodiffBackend, const D: usize>(
    name: &str,
    sigmoid: bool,
    device: &B::Device,
) -> impl Fn(Tensor<B, D>, DiceTarget<B, D>) -> Tensor<B, 1> {
    let dice = DiceLossConfig::new().with_activation(if sigmoid {
        Activation::Sigmoid
    } else {
        Activation::Softmax
    });
    let name = name.to_string();
    let (dl, gd, tv, ce, fo) = (
        dice.init::<B>(device),
        GeneralizedDiceLossConfig::new()
            .with_activation(dice.activation)
            .init::<B>(device),
        TverskyLossConfig::new()
            .with_activation(dice.activation)
            .with_alpha(0.3)
            .with_beta(0.7)
            .init::<B>(device),
        DiceCELossConfig::new()
            .with_dice(dice.clone())
            .init::<B>(device),
        DiceFocalLossConfig::new().with_dice(dice).init::<B>(device),
    );
    move |x, t| match name.as_str() {
        "Dice" => dl.forward(x, t),
        "GeneralizedDice" => gd.forward(x, t),
        "Tversky" => tv.forward(x, t),
        "DiceCE" => ce.forward(x, t),
        "DiceFocal" => fo.forward(x, t),
        FLOOR => x.mean(),
        other => panic!("unknown loss {other}"),
    }
}

/// The input and target of a case on `device`.
fn case_data<B: Backend, const D: usize>(
    case: &BenchCase,
    device: &B::Device,
) -> (Tensor<B, D>, DiceTarget<B, D>) {
    let shape: [usize; D] = case.shape[..D].try_into().expect("rank");
    let n: usize = shape.iter().product();
    let c = shape[1];
    let x = Tensor::<B, D>::from_data(TensorData::new(noise(n, 1), shape), device);
    if case.sigmoid {
        let t: Vec<f32> = noise(n, 2)
            .into_iter()
            .map(|v| f32::from(v > 0.0))
            .collect();
        let t = Tensor::<B, D>::from_data(TensorData::new(t, shape), device);
        (x, t.into())
    } else {
        let mut lshape = shape;
        lshape[1] = 1;
        let l: Vec<i64> = noise(n / c, 3)
            .into_iter()
            .map(|v| (((v + 1.0) / 2.0 * c as f32) as i64).min(c as i64 - 1))
            .collect();
        let l = Tensor::<B, D, Int>::from_data(TensorData::new(l, lshape), device);
        (x, l.into())
    }
}

/// Times one (loss, case) on the current path of this thread.
fn time_one<B: AutodiffBackend, const D: usize>(
    loss: &str,
    case: &BenchCase,
    reps: usize,
    device: &B::Device,
    in_use: &dyn Fn() -> Option<u64>,
) -> Timed {
    let (x, t) = case_data::<B, D>(case, device);
    let f = loss_fn::<B, D>(loss, case.sigmoid, device);
    let logits_bytes = 4.0 * x.shape().num_elements() as f64;
    let step = |grad: bool| {
        let xr = if grad {
            x.clone().require_grad()
        } else {
            x.clone()
        };
        let l = f(xr.clone(), t.clone());
        if grad {
            let grads = l.backward();
            drop(xr.grad(&grads));
        }
    };
    let timed = |grad: bool| {
        for _ in 0..3 {
            step(grad);
        }
        B::sync(device).expect("sync");
        let start = Instant::now();
        for _ in 0..reps {
            step(grad);
        }
        B::sync(device).expect("sync");
        start.elapsed().as_secs_f64() * 1e3 / reps as f64
    };
    let forward = timed(false);
    let both = timed(true);
    let mut synced: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            step(true);
            B::sync(device).expect("sync");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    synced.sort_by(f64::total_cmp);
    let synced = [
        synced[0],
        synced[synced.len() / 2],
        synced[synced.len() - 1],
    ];
    // Extra memory: the device memory in use after the forward pass (with its autodiff graph
    // and what it saved) and after the backward pass (with the gradients), beyond what was in
    // use before; the larger of the two is a lower bound of the pass's peak.
    B::sync(device).expect("sync");
    let memory = in_use().and_then(|before| {
        let xr = x.clone().require_grad();
        let l = f(xr.clone(), t.clone());
        B::sync(device).expect("sync");
        let after_forward = in_use()?;
        let grads = l.backward();
        B::sync(device).expect("sync");
        let after_backward = in_use()?;
        drop(grads);
        let peak = after_forward.max(after_backward).saturating_sub(before);
        Some(peak as f64 / logits_bytes)
    });
    // Launches: the kernels run when the fusion stream executes, which the syncs make happen
    // on this thread.
    #[cfg(feature = "wgpu")]
    let launches = {
        use burn_dice::kernels::launches;
        let xr = x.clone().require_grad();
        let before = launches();
        let l = f(xr.clone(), t.clone());
        B::sync(device).expect("sync");
        let forward = launches() - before;
        let before = launches();
        let grads = l.backward();
        B::sync(device).expect("sync");
        drop(grads);
        Some([forward, launches() - before])
    };
    #[cfg(not(feature = "wgpu"))]
    let launches = None;
    let before = burn_dice::checks::readbacks();
    for _ in 0..reps {
        drop(f(x.clone(), t.clone()));
    }
    let readbacks = burn_dice::checks::readbacks() - before;
    Timed {
        forward,
        both,
        synced,
        memory,
        launches,
        readbacks,
    }
}

/// What [`time_one`] measured (see [`LossTiming`]).
struct Timed {
    forward: f64,
    both: f64,
    synced: [f64; 3],
    memory: Option<f64>,
    launches: Option<[u64; 2]>,
    readbacks: u64,
}

/// Every loss on `cases` (by id), with the kernels and on the generic path; `peak_gbps` the
/// device's peak bandwidth if known; `in_use` the device memory in use now, if the backend
/// reports it.
pub fn bench_losses<B: AutodiffBackend>(
    cases: &str,
    reps: usize,
    peak_gbps: Option<f64>,
    device: &B::Device,
    in_use: &dyn Fn() -> Option<u64>,
) -> Vec<LossTiming> {
    let mut out = Vec::new();
    for case in CASES.iter().filter(|c| cases.contains(c.id)) {
        let n: u64 = case.shape.iter().product::<usize>() as u64;
        // Class indices are 32-bit on the GPU backends.
        let target = if case.sigmoid {
            4 * n
        } else {
            4 * n / case.shape[1] as u64
        };
        let loss_bytes = 2 * (4 * n + target) + 4 * n;
        for loss in LOSSES.into_iter().chain([FLOOR]) {
            // The floor is burn ops whatever the backend: one path.
            let paths: &[bool] = if loss == FLOOR {
                &[true]
            } else {
                &[false, true]
            };
            // What the row must move: a loss reads the input and target twice and writes the
            // gradient; the floor reads the input once and writes its gradient.
            let bytes = if loss == FLOOR { 2 * 4 * n } else { loss_bytes };
            for &generic in paths {
                let run = || match case.shape[4] {
                    1 => time_one::<B, 4>(loss, case, reps, device, in_use),
                    _ => time_one::<B, 5>(loss, case, reps, device, in_use),
                };
                let Timed {
                    forward: forward_ms,
                    both: forward_backward_ms,
                    synced,
                    memory,
                    launches,
                    readbacks,
                } = if generic { generic_only(run) } else { run() };
                let gb_per_s = bytes as f64 / (forward_backward_ms * 1e-3) / 1e9;
                let timing = LossTiming {
                    loss: loss.to_string(),
                    case: case.name.to_string(),
                    path: if loss == FLOOR {
                        "floor".into()
                    } else if generic {
                        "generic".into()
                    } else {
                        format!("{:?}", path::<B>()).to_lowercase()
                    },
                    forward_ms,
                    forward_backward_ms,
                    forward_backward_synced_ms: synced,
                    bytes,
                    gb_per_s,
                    peak_fraction: peak_gbps.map(|p| gb_per_s / p),
                    extra_memory_vs_logits: memory,
                    launches,
                    readbacks,
                };
                println!(
                    "{:<16} {}) {:<8} fwd {:>9.3} ms  fwd+bwd {:>9.3} ms  {:>8.1} GB/s{}{}\n\
                     {:<16} {}) {:<8} fwd+bwd each waited for: min {:.3} median {:.3} max {:.3} ms",
                    timing.loss,
                    case.id,
                    timing.path,
                    forward_ms,
                    forward_backward_ms,
                    gb_per_s,
                    timing
                        .peak_fraction
                        .map_or(String::new(), |f| format!(" ({:.1} % of peak)", 100.0 * f)),
                    memory.map_or(String::new(), |m| format!("  extra memory {m:.2}x logits")),
                    timing.loss,
                    case.id,
                    timing.path,
                    synced[0],
                    synced[1],
                    synced[2],
                );
                if let Some([fwd, bwd]) = launches {
                    println!(
                        "{:<16} {}) {:<8} launches fwd {fwd} bwd {bwd}; read-backs of {reps} \
                         checked calls: {readbacks}",
                        timing.loss, case.id, timing.path
                    );
                }
                out.push(timing);
            }
        }
    }
    out
}
