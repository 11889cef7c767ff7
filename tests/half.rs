//! Half precision: every loss of the family with `f16` and `bf16` inputs, against the same loss
//! computed in f64 on the same (already rounded) input values.
//!
//! What is held, and why these tolerances: the losses read half-precision inputs as they are
//! and compute every sum, ratio and gradient in f32 (`numerics::compute_dtype`); the loss is
//! returned in the input's type, and so is the input's gradient. So against f64 on the same
//! values the only errors are the f32 arithmetic (below 1e-5 relative here) and the final
//! rounding to the half type: half a unit in the last place, 2⁻¹¹ ≈ 4.9e-4 relative for `f16`
//! (11 significant bits) and 2⁻⁸ ≈ 3.9e-3 for `bf16` (8), plus, for gradient components below
//! `f16`'s smallest normal 6.1e-5, an absolute 3e-8. The tolerances are twice that rounding:
//! values within 1e-3 (`f16`) or 8e-3 (`bf16`) of `max(1, |f64 value|)`, gradients within 2e-3
//! or 1.6e-2 of the largest f64 component.
//!
//! A sum of `f16` values overflows at 65,504: a class covering a 256 × 288 image sums to more,
//! so the loss would be infinite or NaN if the sums were kept in the input's type
//! (`big_classes_do_not_overflow`).
//!
//! Backends: burn-flex with `f16` and `bf16` tensors (its CPU kernels read `f32` only, so the
//! generic path runs, in f32); with the `wgpu` feature, `Wgpu<f16>` (every float tensor `f16`,
//! the CubeCL kernels reading `f16`) with the kernels and with the generic path, and `Wgpu<f32>`
//! given an `f16` input. WGSL has no `bf16` arithmetic, so wgpu runs no `bf16` case; a device
//! without `f16` skips the wgpu cases with the reason (fails where `BURN_DICE_REQUIRE` names
//! `wgpu`).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{bf16, f16, DType, Int, Tensor, TensorData};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, GeneralizedDiceLossConfig,
    TverskyLossConfig, WeightType,
};
use burn_dice_tests::{grad_err, values, XorShift as Rng};

type Reference = burn_autodiff::Autodiff<burn_flex::Flex>;
type FlexAutodiff = burn_autodiff::Autodiff<burn_flex::Flex>;

const SHAPE: [usize; 4] = [2, 3, 24, 40];
const LABEL_SHAPE: [usize; 4] = [2, 1, 24, 40];

/// The losses checked: every loss of the family, and the Dice options that change what the
/// statistics sum (squared terms, soft labels, a validity mask) or what is combined with them
/// (class weights, batch Dice, Jaccard).
#[derive(Debug, Clone, Copy)]
enum Loss {
    Dice,
    DiceSquaredJaccardBatchWeighted,
    DiceSoftLabelDense,
    DiceIgnoreIndex,
    Generalized,
    Tversky,
    DiceCe,
    DiceFocal,
}

const LOSSES: [Loss; 8] = [
    Loss::Dice,
    Loss::DiceSquaredJaccardBatchWeighted,
    Loss::DiceSoftLabelDense,
    Loss::DiceIgnoreIndex,
    Loss::Generalized,
    Loss::Tversky,
    Loss::DiceCe,
    Loss::DiceFocal,
];

/// One case's data: logits, class indices in `0..3`, class indices in `0..4` (3 is ignored),
/// a soft target in `[0.05, 0.95]`.
struct Data {
    logits: Vec<f32>,
    labels: Vec<i64>,
    labels_with_ignored: Vec<i64>,
    soft: Vec<f32>,
}

impl Data {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let n: usize = SHAPE.iter().product();
        let pixels: usize = LABEL_SHAPE.iter().product();
        Self {
            logits: (0..n).map(|_| (rng.unit() * 6.0 - 3.0) as f32).collect(),
            labels: (0..pixels).map(|_| rng.below(3) as i64).collect(),
            labels_with_ignored: (0..pixels).map(|_| rng.below(4) as i64).collect(),
            soft: (0..n).map(|_| (0.05 + 0.9 * rng.unit()) as f32).collect(),
        }
    }

    /// The same data with the float values rounded to `dtype`.
    fn rounded(&self, dtype: DType) -> Self {
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| match dtype {
                    DType::F16 => f16::from_f32(x).to_f32(),
                    DType::BF16 => bf16::from_f32(x).to_f32(),
                    _ => x,
                })
                .collect()
        };
        Self {
            logits: round(&self.logits),
            labels: self.labels.clone(),
            labels_with_ignored: self.labels_with_ignored.clone(),
            soft: round(&self.soft),
        }
    }
}

impl Loss {
    /// The reduced loss of `x` (in its own type) against this case's target from `data`.
    fn forward<B: Backend>(self, x: Tensor<B, 4>, data: &Data, device: &B::Device) -> Tensor<B, 1> {
        let labels = |v: &[i64]| {
            Tensor::<B, 4, Int>::from_data(TensorData::new(v.to_vec(), LABEL_SHAPE), device)
        };
        let y = labels(&data.labels);
        let softmax = DiceLossConfig::new().with_activation(Activation::Softmax);
        match self {
            Loss::Dice => softmax.init::<B>(device).forward(x, y),
            Loss::DiceSquaredJaccardBatchWeighted => DiceLossConfig::new()
                .with_activation(Activation::Sigmoid)
                .with_squared_pred(true)
                .with_jaccard(true)
                .with_batch(true)
                .with_weight(Some(vec![0.5, 1.0, 2.0]))
                .init::<B>(device)
                .forward(x, y),
            Loss::DiceSoftLabelDense => {
                // The target in the input's type, as a user's would be.
                let dtype = x.dtype();
                let soft =
                    Tensor::<B, 4>::from_data(TensorData::new(data.soft.clone(), SHAPE), device)
                        .cast(dtype);
                softmax
                    .with_soft_label(true)
                    .init::<B>(device)
                    .forward(x, soft)
            }
            Loss::DiceIgnoreIndex => softmax
                .with_ignore_index(Some(3))
                .with_include_background(false)
                .init::<B>(device)
                .forward(x, labels(&data.labels_with_ignored)),
            Loss::Generalized => GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_weight_type(WeightType::Simple)
                .init::<B>(device)
                .forward(x, y),
            Loss::Tversky => TverskyLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_alpha(0.3)
                .with_beta(0.7)
                .with_gamma(0.75)
                .init::<B>(device)
                .forward(x, y),
            Loss::DiceCe => DiceCELossConfig::new()
                .with_dice(softmax)
                .with_ce_weight(Some(vec![0.2, 1.0, 3.0]))
                .with_label_smoothing(0.1)
                .init::<B>(device)
                .forward(x, y),
            Loss::DiceFocal => DiceFocalLossConfig::new()
                .with_dice(DiceLossConfig::new().with_activation(Activation::Sigmoid))
                .with_gamma(2.0)
                .with_alpha(Some(0.25))
                .init::<B>(device)
                .forward(x, y),
        }
    }
}

/// A loss's value and its input's gradient, with the types they came in.
struct Outcome {
    value: f64,
    value_dtype: DType,
    grad: Vec<f64>,
    grad_dtype: DType,
}

/// Runs `loss` on backend `B` with the logits of `data` as a leaf of type `dtype`.
fn run<B: AutodiffBackend>(loss: Loss, data: &Data, dtype: DType, device: &B::Device) -> Outcome {
    let x = Tensor::<B, 4>::from_data(TensorData::new(data.logits.clone(), SHAPE), device)
        .cast(dtype)
        .detach()
        .require_grad();
    let value = loss.forward(x.clone(), data, device);
    let value_dtype = value.dtype();
    let grads = value.backward();
    let value = values(value)[0];
    let grad = x.grad(&grads).expect("the input has a gradient");
    let grad_dtype = grad.dtype();
    Outcome {
        value,
        value_dtype,
        grad: values(grad),
        grad_dtype,
    }
}

/// The tolerances of `dtype` on values and gradients (see the module docs).
fn tolerances(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F16 => (1e-3, 2e-3),
        DType::BF16 => (8e-3, 1.6e-2),
        other => panic!("no half-precision tolerance for {other:?}"),
    }
}

/// Every loss on backend `B` with inputs of type `dtype`, against f64; `label` names the
/// backend and path in the failures.
fn check_all<B: AutodiffBackend>(label: &str, dtype: DType, device: &B::Device) {
    let (value_tol, grad_tol) = tolerances(dtype);
    let mut failures = Vec::new();
    for (i, loss) in LOSSES.into_iter().enumerate() {
        let data = Data::new(0x4a1f + i as u64).rounded(dtype);
        let got = run::<B>(loss, &data, dtype, device);
        let expected = run::<Reference>(loss, &data, DType::F64, &Default::default());
        let value_err = (got.value - expected.value).abs() / expected.value.abs().max(1.0);
        let grad_error = grad_err(&got.grad, &expected.grad);
        println!(
            "{label} {dtype:?} {loss:?}: value {:.6} (f64 {:.6}, error {value_err:.1e}), \
             gradient error {grad_error:.1e}",
            got.value, expected.value
        );
        if got.value_dtype != dtype || got.grad_dtype != dtype {
            failures.push(format!(
                "{loss:?}: loss in {:?} and gradient in {:?}, expected {dtype:?}",
                got.value_dtype, got.grad_dtype
            ));
        }
        if value_err.is_nan() || value_err > value_tol {
            failures.push(format!(
                "{loss:?}: value {} against f64 {} (error {value_err:.2e} > {value_tol:.0e})",
                got.value, expected.value
            ));
        }
        if grad_error.is_nan() || grad_error > grad_tol {
            failures.push(format!(
                "{loss:?}: gradient error {grad_error:.2e} > {grad_tol:.0e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label} {dtype:?}:\n{}",
        failures.join("\n")
    );
}

/// A two-class input of 256 × 288 pixels whose class 1 covers all but a corner: its `T` and
/// `P` sums pass 65,504, the largest `f16`. The loss is finite, equals f64, and so does the
/// gradient's finiteness (its components, about 1e-5, are `f16` subnormals: only finiteness
/// is held).
fn check_big<B: AutodiffBackend>(label: &str, dtype: DType, device: &B::Device) {
    let shape = [1, 2, 256, 288];
    let pixels = 256 * 288;
    let mut rng = Rng::new(7);
    let labels: Vec<i64> = (0..pixels).map(|n| i64::from(n >= 1000)).collect();
    // Class-major logits: about +1 for the pixel's class, -1 for the other.
    let logits: Vec<f64> = (0..2)
        .flat_map(|c| labels.iter().map(move |&l| if l == c { 1.0 } else { -1.0 }))
        .map(|v| v + rng.unit() - 0.5)
        .collect();
    let rounded: Vec<f32> = logits
        .iter()
        .map(|&x| match dtype {
            DType::F16 => f16::from_f64(x).to_f32(),
            _ => bf16::from_f64(x).to_f32(),
        })
        .collect();
    let loss = DiceLossConfig::new().with_activation(Activation::Softmax);
    let (value, value_dtype, grads_finite) =
        big_on::<B>(&loss, &rounded, &labels, shape, dtype, device);
    let (expected, _, _) = big_on::<Reference>(
        &loss,
        &rounded,
        &labels,
        shape,
        DType::F64,
        &Default::default(),
    );
    let (value_tol, _) = tolerances(dtype);
    println!("{label} {dtype:?} 256×288: value {value:.6} (f64 {expected:.6})");
    assert_eq!(value_dtype, dtype, "{label}: the loss's type");
    assert!(
        (value - expected).abs() <= value_tol * expected.abs().max(1.0),
        "{label} {dtype:?}: value {value} against f64 {expected}"
    );
    assert!(
        grads_finite,
        "{label} {dtype:?}: a gradient component is not finite"
    );
}

/// [`check_big`]'s loss on `B`: value, its type, and whether the gradient is finite.
fn big_on<B: AutodiffBackend>(
    loss: &DiceLossConfig,
    logits: &[f32],
    labels: &[i64],
    shape: [usize; 4],
    dtype: DType,
    device: &B::Device,
) -> (f64, DType, bool) {
    let x = Tensor::<B, 4>::from_data(TensorData::new(logits.to_vec(), shape), device)
        .cast(dtype)
        .detach()
        .require_grad();
    let y = Tensor::<B, 4, Int>::from_data(
        TensorData::new(labels.to_vec(), [1, 1, shape[2], shape[3]]),
        device,
    );
    let value = loss.init::<B>(device).forward(x.clone(), y);
    let value_dtype = value.dtype();
    let grads = value.backward();
    let value = values(value)[0];
    let grad = values(x.grad(&grads).expect("the input has a gradient"));
    (value, value_dtype, grad.iter().all(|g| g.is_finite()))
}

#[test]
fn flex_f16_matches_f64() {
    check_all::<FlexAutodiff>("flex", DType::F16, &Default::default());
}

#[test]
fn flex_bf16_matches_f64() {
    check_all::<FlexAutodiff>("flex", DType::BF16, &Default::default());
}

#[test]
fn big_classes_do_not_overflow() {
    check_big::<FlexAutodiff>("flex", DType::F16, &Default::default());
    check_big::<FlexAutodiff>("flex", DType::BF16, &Default::default());
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn_dice::kernels::{generic_only, path, KernelPath};

    type WgpuF16 = burn_autodiff::Autodiff<burn_wgpu::Wgpu<f16>>;

    /// The wgpu device where it has `f16`; otherwise `None`, said on stderr (a failure where
    /// `BURN_DICE_REQUIRE` names `wgpu`).
    fn f16_device() -> Option<burn_wgpu::WgpuDevice> {
        use cubecl::ir::{ElemType, FloatKind};
        use cubecl::Runtime;
        let device = burn_dice_tests::wgpu_device()?;
        let client = burn_wgpu::WgpuRuntime::client(&device);
        if client
            .properties()
            .supports_type(ElemType::Float(FloatKind::F16))
        {
            Some(device)
        } else {
            burn_dice_tests::missing(
                "wgpu",
                "the wgpu adapter has no f16 (Vulkan's shaderFloat16 and 16-bit storage)",
            );
            None
        }
    }

    #[test]
    fn wgpu_f16_matches_f64_with_the_kernels() {
        let Some(device) = f16_device() else { return };
        assert_eq!(path::<WgpuF16>(), KernelPath::Cube);
        check_all::<WgpuF16>("Wgpu<f16> kernels", DType::F16, &device);
        check_big::<WgpuF16>("Wgpu<f16> kernels", DType::F16, &device);
    }

    #[test]
    fn wgpu_f16_matches_f64_on_the_generic_path() {
        let Some(device) = f16_device() else { return };
        generic_only(|| {
            check_all::<WgpuF16>("Wgpu<f16> generic", DType::F16, &device);
            check_big::<WgpuF16>("Wgpu<f16> generic", DType::F16, &device);
        });
    }

    /// `Wgpu<f32>` given an `f16` input: the kernels read it (or, where the target or mask is
    /// `f32`, the generic path widens it).
    #[test]
    fn wgpu_f32_backend_with_f16_inputs_matches_f64() {
        let Some(device) = f16_device() else { return };
        check_all::<burn_dice_tests::WgpuAutodiff>("Wgpu<f32>", DType::F16, &device);
    }
}
