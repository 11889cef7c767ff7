//! One backend against another on random inputs of every rank: every loss (value and
//! gradient) and the Dice metric. Used by
//! `tests/backends.rs` (wgpu against ndarray) and by the GPU check binary.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_dice::metric::{DiceCounts, EmptyPolicy, Prediction};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig,
};
use serde::Serialize;

use crate::{grad_err, rel_err, values};

/// Relative tolerance on losses between backends.
pub const LOSS_TOL: f64 = 1e-5;
/// Tolerance on gradients between backends (relative to the largest component).
pub const GRAD_TOL: f64 = 1e-4;

/// The losses compared, by name.
pub const LOSSES: [&str; 8] = [
    "dice softmax",
    "dice sigmoid squared jaccard",
    "dice log batch no-bg ignore",
    "generalized dice",
    "focal tversky",
    "dice+ce weighted smoothed",
    "dice+focal",
    "masked dice",
];

/// Deterministic pseudo-random values in [-1, 1).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut r = crate::XorShift::new(seed);
    (0..n)
        .map(|_| (r.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

/// Labels in `0..=classes` (the value `classes` is the ignored label).
fn labels(n: usize, classes: usize, seed: u64) -> Vec<i64> {
    noise(n, seed)
        .into_iter()
        .map(|v| (((v + 1.0) / 2.0 * (classes as f32 + 0.3)) as i64).min(classes as i64))
        .collect()
}

/// Loss `name` and its input gradient on backend `B`.
fn loss_and_grad<B: AutodiffBackend, const D: usize>(
    name: &str,
    shape: [usize; D],
    seed: u64,
    device: &B::Device,
) -> (f64, Vec<f64>) {
    let n: usize = shape.iter().product();
    let c = shape[1];
    let mut lshape = shape;
    lshape[1] = 1;
    let x = Tensor::<B, D>::from_data(
        TensorData::new(noise(n, seed).into_iter().map(|v| 3.0 * v).collect(), shape),
        device,
    )
    .require_grad();
    let raw = labels(n / c, c, seed + 1);
    let clean: Vec<i64> = raw.iter().map(|&l| l.min(c as i64 - 1)).collect();
    let idx = |v: Vec<i64>| Tensor::<B, D, Int>::from_data(TensorData::new(v, lshape), device);
    let t: DiceTarget<B, D> = idx(clean.clone()).into();
    let softmax = DiceLossConfig::new().with_activation(Activation::Softmax);
    let loss = match name {
        "dice softmax" => softmax.init(device).forward(x.clone(), t),
        "dice sigmoid squared jaccard" => {
            let dense: Vec<f32> = noise(n, seed + 2)
                .into_iter()
                .map(|v| f32::from(v > 0.0))
                .collect();
            let dense = Tensor::<B, D>::from_data(TensorData::new(dense, shape), device);
            DiceLossConfig::new()
                .with_activation(Activation::Sigmoid)
                .with_squared_pred(true)
                .with_jaccard(true)
                .init(device)
                .forward(x.clone(), dense)
        }
        "dice log batch no-bg ignore" => softmax
            .clone()
            .with_log_loss(true)
            .with_batch(true)
            .with_include_background(false)
            .with_ignore_index(Some(c))
            .init(device)
            .forward(x.clone(), idx(raw.clone())),
        "generalized dice" => GeneralizedDiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .init(device)
            .forward(x.clone(), t),
        "focal tversky" => TverskyLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_alpha(0.3)
            .with_beta(0.7)
            .with_gamma(4.0 / 3.0)
            .init(device)
            .forward(x.clone(), t),
        "dice+ce weighted smoothed" => DiceCELossConfig::new()
            .with_dice(softmax.clone().with_ignore_index(Some(c)))
            .with_ce_weight(Some((0..c).map(|k| 0.5 + k as f32).collect()))
            .with_label_smoothing(0.1)
            .init(device)
            .forward(x.clone(), idx(raw.clone())),
        "dice+focal" => DiceFocalLossConfig::new()
            .with_dice(softmax.clone())
            .with_alpha(Some(0.25))
            .init(device)
            .forward(x.clone(), t),
        "masked dice" => {
            let mut mshape = shape;
            mshape[1] = 1;
            let m: Vec<f32> = noise(n / c, seed + 3)
                .into_iter()
                .map(|v| f32::from(v > -0.5))
                .collect();
            let mask = Tensor::<B, D>::from_data(TensorData::new(m, mshape), device);
            softmax.init(device).forward_masked(x.clone(), t, mask)
        }
        other => panic!("unknown loss {other}"),
    };
    let grads = loss.backward();
    let g = values(x.grad(&grads).expect("gradient"));
    (values(loss)[0], g)
}

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Loss (or `metric`) and rank.
    pub name: String,
    /// Relative difference of the values.
    pub value_err: f64,
    /// Gradient difference relative to the largest component (0 for the metric).
    pub grad_err: f64,
    /// Within the tolerances.
    pub ok: bool,
}

fn compare_rank<X: AutodiffBackend, Y: AutodiffBackend, const D: usize>(
    shape: [usize; D],
    dx: &X::Device,
    dy: &Y::Device,
    out: &mut Vec<Comparison>,
) {
    for (k, name) in LOSSES.iter().enumerate() {
        let seed = 100 * D as u64 + k as u64;
        let (lx, gx) = loss_and_grad::<X, D>(name, shape, seed, dx);
        let (ly, gy) = loss_and_grad::<Y, D>(name, shape, seed, dy);
        let value_err = rel_err(ly, lx, 1e-6);
        let g = grad_err(&gy, &gx);
        out.push(Comparison {
            name: format!("{name}, rank {D}"),
            value_err,
            grad_err: g,
            ok: value_err <= LOSS_TOL && g <= GRAD_TOL,
        });
    }
    // The metric: hard Dice counts of the same logits.
    let n: usize = shape.iter().product();
    let c = shape[1];
    let mut lshape = shape;
    lshape[1] = 1;
    let logits = noise(n, 7 * D as u64);
    let lab = labels(n / c, c, 9 * D as u64);
    let dice = |xs: Vec<f32>, ls: Vec<i64>| -> (Vec<f64>, Vec<f64>) {
        let run = |x: Tensor<X::InnerBackend, D>, l: Tensor<X::InnerBackend, D, Int>| {
            values(
                DiceCounts::new(Prediction::Argmax.apply(x), l, c, Some(c))
                    .dice(false, EmptyPolicy::Zero),
            )
        };
        let run_y = |x: Tensor<Y::InnerBackend, D>, l: Tensor<Y::InnerBackend, D, Int>| {
            values(
                DiceCounts::new(Prediction::Argmax.apply(x), l, c, Some(c))
                    .dice(false, EmptyPolicy::Zero),
            )
        };
        (
            run(
                Tensor::from_data(TensorData::new(xs.clone(), shape), dx),
                Tensor::from_data(TensorData::new(ls.clone(), lshape), dx),
            ),
            run_y(
                Tensor::from_data(TensorData::new(xs, shape), dy),
                Tensor::from_data(TensorData::new(ls, lshape), dy),
            ),
        )
    };
    let (a, b) = dice(logits, lab);
    let value_err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    out.push(Comparison {
        name: format!("dice metric, rank {D}"),
        value_err,
        grad_err: 0.0,
        ok: value_err <= 1e-6,
    });
}

/// Every loss and the metric on ranks 3, 4 and 5, backend `Y` against backend `X`.
pub fn compare_backends<X: AutodiffBackend, Y: AutodiffBackend>(
    dx: &X::Device,
    dy: &Y::Device,
) -> Vec<Comparison> {
    let mut out = Vec::new();
    compare_rank::<X, Y, 3>([2, 3, 40], dx, dy, &mut out);
    compare_rank::<X, Y, 4>([2, 4, 12, 10], dx, dy, &mut out);
    compare_rank::<X, Y, 5>([2, 3, 6, 5, 4], dx, dy, &mut out);
    out
}

/// Backends whose devices are their default.
pub fn default_device<B: Backend>() -> B::Device {
    Default::default()
}
