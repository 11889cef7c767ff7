//! Properties of the Dice loss that hold for any input, on the burn 0.22 line (the 0.21 line's
//! `tests/properties.rs`): range, zero at a perfect prediction,
//! symmetry, class-permutation invariance, and the documented empty-mask values.

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_dice::{Activation, DiceLossConfig};
mod common;
use common::values;

fn logits<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 2.0), device)
}

fn labels<const D: usize>(shape: [usize; D], classes: usize, device: &Device) -> Tensor<D, Int> {
    let mut s = shape;
    s[1] = 1;
    Tensor::<D>::random(s, Distribution::Uniform(0.0, classes as f64), device)
        .floor()
        .int()
        .clamp(0, classes as i64 - 1)
}

fn loss_in_unit_interval(device: &Device) {
    let shape = [3, 4, 6, 6];
    for seed in 0..4u64 {
        device.seed(seed);
        let x = logits::<4>(shape, device);
        let y = labels::<4>(shape, 4, device);
        let probs_target: Tensor<4> = Tensor::random(shape, Distribution::Default, device);
        let configs = [
            DiceLossConfig::new().with_activation(Activation::Softmax),
            DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_squared_pred(true)
                .with_batch(true),
            DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_jaccard(true)
                .with_include_background(false),
            DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_smooth_nr(0.0)
                .with_ignore_index(Some(3)),
        ];
        for config in &configs {
            let v = values(
                config
                    .init(device)
                    .forward_no_reduction(x.clone(), y.clone()),
            );
            assert!(v.iter().all(|l| (0.0..=1.0).contains(l)), "{config}: {v:?}");
        }
        let sig = DiceLossConfig::new().with_activation(Activation::Sigmoid);
        let v = values(
            sig.init(device)
                .forward_no_reduction(x.clone(), probs_target),
        );
        assert!(
            v.iter().all(|l| (0.0..=1.0).contains(l)),
            "sigmoid, soft target: {v:?}"
        );
    }
}

fn perfect_prediction_scores_zero(device: &Device) {
    // Every class present in every sample.
    let y = Tensor::<3, Int>::from_ints([[[0, 1, 2, 2, 1]], [[2, 0, 1, 0, 0]]], device);
    let onehot: Tensor<3> = y
        .clone()
        .squeeze_dim::<2>(1)
        .one_hot::<3>(3)
        .permute([0, 2, 1])
        .float();
    for config in [
        DiceLossConfig::new(),
        DiceLossConfig::new().with_jaccard(true),
        DiceLossConfig::new()
            .with_squared_pred(true)
            .with_batch(true),
        DiceLossConfig::new().with_log_loss(true),
    ] {
        let config = config.with_smooth_nr(0.0).with_smooth_dr(0.0);
        let loss = config.init(device);
        let a = values(loss.forward_no_reduction(onehot.clone(), y.clone()));
        let b = values(loss.forward_no_reduction(onehot.clone(), onehot.clone()));
        assert!(
            a.iter().chain(&b).all(|l| l.abs() < 1e-6),
            "{config}: {a:?} {b:?}"
        );
    }
}

fn symmetric_in_prediction_and_target(device: &Device) {
    device.seed(7);
    let p: Tensor<5> = Tensor::random([2, 3, 3, 4, 5], Distribution::Default, device);
    let t: Tensor<5> = Tensor::random([2, 3, 3, 4, 5], Distribution::Default, device);
    for config in [
        DiceLossConfig::new(),
        DiceLossConfig::new().with_squared_pred(true),
        DiceLossConfig::new().with_jaccard(true).with_batch(true),
    ] {
        let loss = config.init(device);
        let a = values(loss.forward_no_reduction(p.clone(), t.clone()));
        let b = values(loss.forward_no_reduction(t.clone(), p.clone()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{config}: {a:?} vs {b:?}");
        }
    }
}

fn invariant_to_class_permutation(device: &Device) {
    device.seed(11);
    let shape = [2, 4, 5, 5];
    let x = logits::<4>(shape, device);
    let y = labels::<4>(shape, 4, device);
    let perm = [2usize, 0, 3, 1]; // new channel k holds old channel perm[k]
    let index = Tensor::<1, Int>::from_data(TensorData::from([2i64, 0, 3, 1]), device);
    let x_perm = x.clone().select(1, index);
    // old label perm[k] becomes k
    let mut inverse = [0i64; 4];
    for (k, &old) in perm.iter().enumerate() {
        inverse[old] = k as i64;
    }
    let lut = Tensor::<1, Int>::from_data(TensorData::from(inverse), device);
    let y_perm = lut
        .select(0, y.clone().flatten::<1>(0, 3))
        .reshape([2, 1, 5, 5]);
    for config in [
        DiceLossConfig::new().with_activation(Activation::Softmax),
        DiceLossConfig::new()
            .with_activation(Activation::Sigmoid)
            .with_batch(true)
            .with_jaccard(true),
    ] {
        let loss = config.init(device);
        let a = values(loss.forward_no_reduction(x.clone(), y.clone()));
        let b = values(loss.forward_no_reduction(x_perm.clone(), y_perm.clone()));
        let rows = a.len() / 4;
        for r in 0..rows {
            for (k, &old) in perm.iter().enumerate() {
                let (got, want) = (b[r * 4 + k], a[r * 4 + old]);
                assert!(
                    (got - want).abs() < 1e-6,
                    "{config}: class {old}: {got} vs {want}"
                );
            }
        }
        let (ma, mb) = (
            values(loss.forward(x.clone(), y.clone()))[0],
            values(loss.forward(x_perm.clone(), y_perm.clone()))[0],
        );
        assert!((ma - mb).abs() < 1e-6);
    }
}

/// The values documented under "Smoothing and empty masks" on `DiceLoss`.
fn empty_class_values(device: &Device) {
    // Class 2 is absent from the target; the prediction puts mass 0.1 + 0.3 on it in sample 0
    // and nothing in sample 1.
    let p = Tensor::<3>::from_floats(
        [
            [[0.6, 0.2, 0.5], [0.3, 0.4, 0.5], [0.1, 0.4, 0.0]],
            [[0.5, 0.5, 1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]],
        ],
        device,
    );
    let y = Tensor::<3, Int>::from_ints([[[0, 1, 0]], [[1, 0, 0]]], device);
    let default = values(
        DiceLossConfig::new()
            .init(device)
            .forward_no_reduction(p.clone(), y.clone()),
    );
    // 1 − smooth_nr / (P + smooth_dr)
    let expected = 1.0 - 1e-5 / (0.5 + 1e-5);
    assert!(
        (default[2] - expected).abs() < 1e-6,
        "{} vs {expected}",
        default[2]
    );
    assert!(
        default[5].abs() < 1e-6,
        "empty target, empty prediction: {}",
        default[5]
    );

    let unsmoothed = DiceLossConfig::new()
        .with_smooth_nr(0.0)
        .with_smooth_dr(0.0)
        .init(device);
    let v = values(unsmoothed.forward_no_reduction(p, y));
    assert_eq!(v[2], 1.0, "absent class, mass predicted: loss 1");
    assert!(
        v[5].is_nan(),
        "absent class, nothing predicted, no smoothing: 0/0 = NaN"
    );
}

fn log_loss_is_minus_log_dice(device: &Device) {
    device.seed(3);
    let x = logits::<4>([2, 3, 4, 4], device);
    let y = labels::<4>([2, 3, 4, 4], 3, device);
    let base = DiceLossConfig::new().with_activation(Activation::Softmax);
    let plain = values(base.init(device).forward_no_reduction(x.clone(), y.clone()));
    let log = values(
        base.with_log_loss(true)
            .init(device)
            .forward_no_reduction(x, y),
    );
    for (l, p) in log.iter().zip(&plain) {
        assert!((l + (1.0 - p).ln()).abs() < 1e-5, "{l} vs -ln(1 - {p})");
    }
}

#[test]
fn loss_in_unit_interval_on_every_device() {
    for (_, device) in common::devices() {
        loss_in_unit_interval(&device);
    }
}

#[test]
fn perfect_prediction_scores_zero_on_every_device() {
    for (_, device) in common::devices() {
        perfect_prediction_scores_zero(&device);
    }
}

#[test]
fn symmetric_in_prediction_and_target_on_every_device() {
    for (_, device) in common::devices() {
        symmetric_in_prediction_and_target(&device);
    }
}

#[test]
fn invariant_to_class_permutation_on_every_device() {
    for (_, device) in common::devices() {
        invariant_to_class_permutation(&device);
    }
}

#[test]
fn empty_class_values_on_every_device() {
    for (_, device) in common::devices() {
        empty_class_values(&device);
    }
}

#[test]
fn log_loss_is_minus_log_dice_on_every_device() {
    for (_, device) in common::devices() {
        log_loss_is_minus_log_dice(&device);
    }
}
