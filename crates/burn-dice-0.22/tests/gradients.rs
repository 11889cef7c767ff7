//! Gradient checks on the burn 0.22 line: autodiff's gradient of every loss option against
//! central finite differences, all in f64 on burn-flex (the 0.21 line's cases and tolerance).

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceReduction, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig, WeightType,
};

mod common;
use common::values;

/// burn-flex with autodiff; every tensor here is created from f64 data and kept in f64.
fn device() -> Device {
    Device::flex().autodiff()
}

/// An f64 float tensor of `values` and `shape` on [`device`].
fn f64_tensor<const D: usize>(values: Vec<f64>, shape: Vec<usize>) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), (&device(), DType::F64))
}

/// Deterministic pseudo-random numbers in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

enum Labels {
    /// Class indices `[B, 1, *spatial]`, values in `0..n` (`n` may exceed the channel count
    /// to make ignored pixels).
    Indices { n: i64, absent: Option<i64> },
    /// A dense one-hot or multi-label target.
    Dense,
    /// A dense soft target in `[0.05, 0.95]`.
    Soft,
}

struct Setup {
    shape: Vec<usize>,
    input: Vec<f64>,
    labels: Vec<i64>,
    dense: Vec<f64>,
    indices: bool,
}

impl Setup {
    fn new(shape: &[usize], labels: Labels, seed: u64, probabilities: bool) -> Self {
        let n: usize = shape.iter().product();
        let pixels = n / shape[1];
        let input = noise(n, seed)
            .into_iter()
            .map(|v| {
                if probabilities {
                    0.5 + 0.45 * v
                } else {
                    3.0 * v
                }
            })
            .collect();
        let (labels, dense, indices) = match labels {
            Labels::Indices { n: classes, absent } => {
                let l = noise(pixels, seed + 1)
                    .into_iter()
                    .map(|v| {
                        let mut c = (((v + 1.0) / 2.0) * classes as f64) as i64 % classes;
                        if Some(c) == absent {
                            c = (c + 1) % classes;
                        }
                        c
                    })
                    .collect();
                (l, Vec::new(), true)
            }
            Labels::Dense => {
                let d = noise(n, seed + 2)
                    .into_iter()
                    .map(|v| if v > 0.2 { 1.0 } else { 0.0 })
                    .collect();
                (Vec::new(), d, false)
            }
            Labels::Soft => {
                let d = noise(n, seed + 3)
                    .into_iter()
                    .map(|v| 0.5 + 0.45 * v)
                    .collect();
                (Vec::new(), d, false)
            }
        };
        Self {
            shape: shape.to_vec(),
            input,
            labels,
            dense,
            indices,
        }
    }

    fn target<const D: usize>(&self) -> DiceTarget<D> {
        let device = device();
        if self.indices {
            let mut shape = self.shape.clone();
            shape[1] = 1;
            Tensor::<D, Int>::from_data(TensorData::new(self.labels.clone(), shape), &device).into()
        } else {
            f64_tensor::<D>(self.dense.clone(), self.shape.clone()).into()
        }
    }

    /// Worst |autodiff − finite difference| of `loss` relative to the largest gradient
    /// component.
    fn check_fn<const D: usize>(&self, loss: &LossFn<D>) -> f64 {
        let at = |x: Vec<f64>| {
            let input = f64_tensor::<D>(x, self.shape.clone());
            values(loss(input, self.target::<D>()))[0]
        };
        let input = f64_tensor::<D>(self.input.clone(), self.shape.clone()).require_grad();
        let grads = loss(input.clone(), self.target::<D>()).backward();
        let autodiff = values(input.grad(&grads).expect("gradient"));
        let h = 1e-6;
        let numeric: Vec<f64> = (0..self.input.len())
            .map(|i| {
                let mut plus = self.input.clone();
                plus[i] += h;
                let mut minus = self.input.clone();
                minus[i] -= h;
                (at(plus) - at(minus)) / (2.0 * h)
            })
            .collect();
        let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            scale > 0.0,
            "the gradient is zero everywhere: nothing is checked"
        );
        autodiff
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).abs() / scale)
            .fold(0.0, f64::max)
    }
}

/// A loss on the f64 autodiff backend.
type LossFn<const D: usize> = dyn Fn(Tensor<D>, DiceTarget<D>) -> Tensor<1>;

impl Setup {
    fn check<const D: usize>(&self, config: &DiceLossConfig) -> f64 {
        let loss = config.init(&device());
        self.check_fn::<D>(&move |x, t| loss.forward(x, t))
    }
}

const TOL: f64 = 1e-6;

fn softmax() -> DiceLossConfig {
    DiceLossConfig::new().with_activation(Activation::Softmax)
}

fn sigmoid() -> DiceLossConfig {
    DiceLossConfig::new().with_activation(Activation::Sigmoid)
}

fn assert_close<const D: usize>(name: &str, setup: &Setup, config: DiceLossConfig) {
    let err = setup.check::<D>(&config);
    assert!(
        err < TOL,
        "{name}: autodiff off finite differences by {err:.2e}"
    );
}

const IDX3: Labels = Labels::Indices { n: 3, absent: None };

#[test]
fn each_option_2d() {
    let idx = Setup::new(&[2, 3, 4, 4], IDX3, 1, false);
    let cases: Vec<(&str, DiceLossConfig)> = vec![
        ("softmax", softmax()),
        ("no background", softmax().with_include_background(false)),
        ("squared_pred", softmax().with_squared_pred(true)),
        ("jaccard", softmax().with_jaccard(true)),
        (
            "jaccard + squared_pred",
            softmax().with_jaccard(true).with_squared_pred(true),
        ),
        ("batch", softmax().with_batch(true)),
        ("weight", softmax().with_weight(Some(vec![0.5, 1.0, 2.0]))),
        ("log_loss", softmax().with_log_loss(true)),
        ("sum", softmax().with_reduction(DiceReduction::Sum)),
        (
            "smooth 0/0",
            softmax().with_smooth_nr(0.0).with_smooth_dr(0.0),
        ),
        (
            "smooth 1/1",
            softmax().with_smooth_nr(1.0).with_smooth_dr(1.0),
        ),
    ];
    for (name, config) in cases {
        assert_close::<4>(name, &idx, config);
    }
}

#[test]
fn ignore_index() {
    // Labels 0..4 on a 3-channel input: label 3 is the ignored value.
    let setup = Setup::new(
        &[2, 3, 4, 4],
        Labels::Indices { n: 4, absent: None },
        2,
        false,
    );
    assert_close::<4>("ignore_index", &setup, softmax().with_ignore_index(Some(3)));
    let setup = Setup::new(&[2, 3, 4, 4], IDX3, 3, false);
    assert_close::<4>(
        "ignore class 0",
        &setup,
        softmax()
            .with_ignore_index(Some(0))
            .with_include_background(false),
    );
}

#[test]
fn empty_class() {
    let setup = Setup::new(
        &[2, 3, 4, 4],
        Labels::Indices {
            n: 3,
            absent: Some(2),
        },
        4,
        false,
    );
    assert_close::<4>("empty class", &setup, softmax());
    assert_close::<4>("empty class, batch", &setup, softmax().with_batch(true));
    assert_close::<4>(
        "empty class, smooth_nr 0",
        &setup,
        softmax().with_smooth_nr(0.0),
    );
}

#[test]
fn dense_targets_and_activations() {
    let dense = Setup::new(&[2, 3, 4, 4], Labels::Dense, 5, false);
    assert_close::<4>("sigmoid", &dense, sigmoid());
    assert_close::<4>("sigmoid squared", &dense, sigmoid().with_squared_pred(true));
    let probs = Setup::new(&[2, 3, 4, 4], Labels::Dense, 6, true);
    assert_close::<4>("no activation", &probs, DiceLossConfig::new());
    assert_close::<4>(
        "no activation, jaccard",
        &probs,
        DiceLossConfig::new().with_jaccard(true),
    );
}

#[test]
fn binary_and_ranks() {
    let binary = Setup::new(
        &[2, 1, 5, 5],
        Labels::Indices { n: 2, absent: None },
        7,
        false,
    );
    assert_close::<4>("binary sigmoid", &binary, sigmoid());
    let one_d = Setup::new(&[2, 3, 10], IDX3, 8, false);
    assert_close::<3>("1-D", &one_d, softmax());
    let three_d = Setup::new(&[2, 3, 3, 3, 3], IDX3, 9, false);
    assert_close::<5>("3-D", &three_d, softmax().with_include_background(false));
}

fn assert_loss<const D: usize>(name: &str, setup: &Setup, loss: &LossFn<D>) {
    let err = setup.check_fn::<D>(loss);
    assert!(
        err < TOL,
        "{name}: autodiff off finite differences by {err:.2e}"
    );
}

#[test]
fn generalized_dice() {
    let device = device();
    let idx = Setup::new(&[2, 3, 4, 4], IDX3, 10, false);
    let empty = Setup::new(
        &[2, 3, 4, 4],
        Labels::Indices {
            n: 3,
            absent: Some(1),
        },
        11,
        false,
    );
    for weight_type in [WeightType::Square, WeightType::Simple, WeightType::Uniform] {
        for batch in [false, true] {
            let config = GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_weight_type(weight_type)
                .with_batch(batch);
            let loss = config.init(&device);
            let f = move |x, t| loss.forward(x, t);
            assert_loss::<4>(&format!("{weight_type:?} batch={batch}"), &idx, &f);
            assert_loss::<4>(
                &format!("{weight_type:?} batch={batch}, empty class"),
                &empty,
                &f,
            );
        }
    }
}

#[test]
fn tversky_extremes_and_focal() {
    let device = device();
    let idx = Setup::new(&[2, 3, 4, 4], IDX3, 12, false);
    let empty = Setup::new(
        &[2, 3, 4, 4],
        Labels::Indices {
            n: 3,
            absent: Some(2),
        },
        13,
        false,
    );
    // (0, 0) is left out: TI is then 1 whatever the input, a constant loss.
    for (alpha, beta) in [(0.0, 1.0), (1.0, 0.0), (0.0, 0.5), (1.0, 1.0), (0.3, 0.7)] {
        for gamma in [1.0, 4.0 / 3.0, 0.75] {
            let loss = TverskyLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_alpha(alpha)
                .with_beta(beta)
                .with_gamma(gamma)
                .init(&device);
            let f = move |x, t| loss.forward(x, t);
            let name = format!("alpha {alpha} beta {beta} gamma {gamma}");
            assert_loss::<4>(&name, &idx, &f);
            assert_loss::<4>(&format!("{name}, empty class"), &empty, &f);
        }
    }
}

#[test]
fn dice_ce() {
    let device = device();
    let idx = Setup::new(
        &[2, 3, 4, 4],
        Labels::Indices { n: 4, absent: None },
        14,
        false,
    );
    let softmax = DiceLossConfig::new().with_activation(Activation::Softmax);
    let plain = DiceCELossConfig::new()
        .with_dice(softmax.clone())
        .init(&device);
    let idx3 = Setup::new(&[2, 3, 4, 4], IDX3, 20, false);
    assert_loss::<4>("plain", &idx3, &move |x, t| plain.forward(x, t));
    // `idx` has labels 0..4 on 3 channels: label 3 is the ignored value.
    for (name, config) in [
        (
            "weights, smoothing, ignore",
            DiceCELossConfig::new()
                .with_dice(
                    softmax
                        .clone()
                        .with_ignore_index(Some(3))
                        .with_include_background(false),
                )
                .with_ce_weight(Some(vec![0.5, 1.0, 2.0]))
                .with_label_smoothing(0.1),
        ),
        (
            "sum",
            DiceCELossConfig::new()
                .with_dice(
                    softmax
                        .clone()
                        .with_reduction(DiceReduction::Sum)
                        .with_ignore_index(Some(3)),
                )
                .with_lambda_ce(0.5),
        ),
    ] {
        let loss = config.init(&device);
        assert_loss::<4>(name, &idx, &move |x, t| loss.forward(x, t));
    }
    let binary = Setup::new(
        &[2, 1, 5, 5],
        Labels::Indices { n: 2, absent: None },
        15,
        false,
    );
    let loss = DiceCELossConfig::new()
        .with_dice(DiceLossConfig::new().with_activation(Activation::Sigmoid))
        .with_pos_weight(Some(2.5))
        .init(&device);
    assert_loss::<4>("binary, pos_weight", &binary, &move |x, t| {
        loss.forward(x, t)
    });
}

#[test]
fn dice_focal() {
    let device = device();
    let dense = Setup::new(&[2, 3, 4, 4], Labels::Dense, 16, false);
    let idx = Setup::new(
        &[2, 3, 4, 4],
        Labels::Indices {
            n: 4,
            absent: Some(1),
        },
        17,
        false,
    );
    let sigmoid = DiceLossConfig::new().with_activation(Activation::Sigmoid);
    for (name, setup, config) in [
        (
            "dense",
            &dense,
            DiceFocalLossConfig::new().with_dice(sigmoid.clone()),
        ),
        (
            "dense, alpha, gamma 0.5",
            &dense,
            DiceFocalLossConfig::new()
                .with_dice(sigmoid.with_include_background(false))
                .with_alpha(Some(0.25))
                .with_gamma(0.5),
        ),
        (
            "indices, ignore, empty class",
            &idx,
            DiceFocalLossConfig::new().with_dice(
                DiceLossConfig::new()
                    .with_activation(Activation::Softmax)
                    .with_ignore_index(Some(3))
                    .with_weight(Some(vec![1.0, 2.0, 0.5])),
            ),
        ),
    ] {
        let loss = config.init(&device);
        assert_loss::<4>(name, setup, &move |x, t| loss.forward(x, t));
    }
}

#[test]
fn masked_dice() {
    let device = device();
    let idx = Setup::new(&[2, 3, 4, 4], IDX3, 18, false);
    let mask: Vec<f64> = noise(16, 19)
        .into_iter()
        .map(|v| if v > -0.4 { 1.0 } else { 0.0 })
        .collect();
    let loss = DiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .init(&device);
    let f = move |x: Tensor<4>, t| {
        let m = f64_tensor::<4>(mask.clone(), vec![1, 1, 4, 4]);
        loss.forward_masked(x, t, m)
    };
    assert_loss::<4>("masked", &idx, &f);
}

/// `soft_label` (the L1 intersection, with its kinks at `p = t`, which random data misses by far
/// more than the step): every loss that has it, soft and hard targets.
#[test]
fn soft_label() {
    let device = device();
    let soft = Setup::new(&[2, 3, 4, 4], Labels::Soft, 21, false);
    let probs = Setup::new(&[2, 3, 4, 4], Labels::Soft, 22, true);
    let idx = Setup::new(&[2, 3, 4, 4], IDX3, 23, false);
    let soft_3d = Setup::new(&[2, 2, 3, 3, 3], Labels::Soft, 24, false);
    let dice = |c: DiceLossConfig| c.with_soft_label(true);
    assert_close::<4>("sigmoid", &soft, dice(sigmoid()));
    assert_close::<4>("sigmoid jaccard", &soft, dice(sigmoid().with_jaccard(true)));
    assert_close::<4>(
        "sigmoid batch log_loss",
        &soft,
        dice(sigmoid().with_batch(true).with_log_loss(true)),
    );
    assert_close::<4>("softmax", &soft, dice(softmax()));
    assert_close::<4>("no activation", &probs, dice(DiceLossConfig::new()));
    assert_close::<4>(
        "softmax, class indices",
        &idx,
        dice(softmax().with_include_background(false)),
    );
    assert_close::<5>("3-D sigmoid", &soft_3d, dice(sigmoid()));
    for weight_type in [WeightType::Square, WeightType::Simple, WeightType::Uniform] {
        let loss = GeneralizedDiceLossConfig::new()
            .with_activation(Activation::Sigmoid)
            .with_weight_type(weight_type)
            .with_soft_label(true)
            .init(&device);
        assert_loss::<4>(
            &format!("generalized {weight_type:?}"),
            &soft,
            &move |x, t| loss.forward(x, t),
        );
    }
    for (alpha, beta, gamma) in [(0.3, 0.7, 1.0), (1.0, 1.0, 1.0), (0.5, 0.5, 4.0 / 3.0)] {
        let loss = TverskyLossConfig::new()
            .with_activation(Activation::Sigmoid)
            .with_alpha(alpha)
            .with_beta(beta)
            .with_gamma(gamma)
            .with_soft_label(true)
            .init(&device);
        assert_loss::<4>(
            &format!("tversky {alpha} {beta} {gamma}"),
            &soft,
            &move |x, t| loss.forward(x, t),
        );
    }
    let ce = DiceCELossConfig::new()
        .with_dice(dice(softmax()))
        .init(&device);
    assert_loss::<4>("dice-ce", &soft, &move |x, t| ce.forward(x, t));
    let focal = DiceFocalLossConfig::new()
        .with_dice(dice(sigmoid()))
        .init(&device);
    assert_loss::<4>("dice-focal", &soft, &move |x, t| focal.forward(x, t));
}
