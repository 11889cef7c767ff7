//! Test helpers shared by the kernel families: every loss and option with a kernel against
//! the generic path, and the data checks a kernel makes against the burn-ops ones.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use crate::kernels::generic_only;
use crate::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};

/// A small shape: every case on one block of the kernels.
pub(crate) const SMALL: [usize; 4] = [2, 3, 5, 7];

fn floats(data: TensorData) -> Vec<f64> {
    data.convert::<f64>().into_vec::<f64>().expect("float data")
}

type LossOf<B> = Box<dyn Fn(Tensor<B, 4>) -> Tensor<B, 1>>;

/// Loss and input gradient of `f` at `x`.
fn loss_and_grad<B: AutodiffBackend>(
    f: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 1>,
    x: &Tensor<B, 4>,
) -> (Vec<f64>, Vec<f64>) {
    let x = x.clone().detach().require_grad();
    let loss = f(x.clone());
    let grads = loss.backward();
    (
        floats(loss.into_data()),
        floats(x.grad(&grads).expect("tracked").into_data()),
    )
}

/// The generic path in `f64` on burn-ndarray: the reference of [`compare_on`].
type Reference = burn_autodiff::Autodiff<burn_ndarray::NdArray<f64>>;

/// The random inputs of [`compare_on`], made on the host so that every backend gets the same.
struct HostData {
    shape: [usize; 4],
    x: TensorData,
    probs: TensorData,
    dense: TensorData,
    /// Soft labels in `[0, 1)`, for `soft_label`, clear of the predictions (see
    /// `burn_dice_core::testing::soft_targets_clear_of_predictions`).
    soft: TensorData,
    labels: TensorData,
    mask: TensorData,
}

impl HostData {
    fn new(shape: [usize; 4]) -> Self {
        type H = burn_ndarray::NdArray<f32>;
        let [b, c, h, w] = shape;
        let lshape = [b, 1, h, w];
        let d = Default::default();
        let float = |s: [usize; 4], dist| Tensor::<H, 4>::random(s, dist, &d).into_data();
        let x = float(shape, Distribution::Normal(0.0, 2.0));
        // Without an activation the input is a probability map: logits of either sign
        // would make `P` cancel towards 0 and the ratio ill-conditioned in f32.
        let probs = float(shape, Distribution::Uniform(0.05, 1.0));
        let values = |t: &TensorData| t.to_vec::<f32>().expect("f32 data");
        let mut soft = values(&float(shape, Distribution::Uniform(0.0, 1.0)));
        burn_dice_core::testing::soft_targets_clear_of_predictions(
            &mut soft,
            &values(&x),
            &values(&probs),
            [b, c, h * w],
            1e-3,
        );
        Self {
            shape,
            x,
            probs,
            dense: float(shape, Distribution::Bernoulli(0.4)),
            soft: TensorData::new(soft, shape.to_vec()),
            // Labels 0..=c; label c is ignored below.
            labels: Tensor::<H, 4, Int>::random(
                lshape,
                Distribution::Uniform(0.0, c as f64 + 1.0),
                &d,
            )
            .clamp(0, c as i64)
            .into_data(),
            mask: float(lshape, Distribution::Bernoulli(0.7)),
        }
    }
}

/// Every loss of the family with every option that reaches a kernel, on backend `B` (its
/// kernels, where it has them) against the generic path in `f64` on burn-ndarray, on random
/// inputs of `shape` (`[batch, class, h, w]`, at least 2 classes): values within 1e-5
/// (relative), gradients within 1e-4 of the largest component.
pub(crate) fn compare_on<B: AutodiffBackend>(device: &B::Device, shape: [usize; 4]) {
    let data = HostData::new(shape);
    let ours = cases::<B>(&data, device);
    let reference = cases::<Reference>(&data, &Default::default());
    for ((name, f), (_, f_ref)) in ours.iter().zip(&reference) {
        let (loss, grad) = loss_and_grad(f.as_ref(), &input::<B>(name, &data, device));
        let (loss_ref, grad_ref) = generic_only(|| {
            loss_and_grad(
                f_ref.as_ref(),
                &input::<Reference>(name, &data, &Default::default()),
            )
        });
        let (loss, loss_ref) = (loss[0], loss_ref[0]);
        let value_err = (loss - loss_ref).abs() / loss_ref.abs().max(0.1);
        let scale = grad_ref
            .iter()
            .fold(0.0f64, |m, g| m.max(g.abs()))
            .max(1e-30);
        let grad_err = grad
            .iter()
            .zip(&grad_ref)
            .map(|(g, r)| (g - r).abs() / scale)
            .fold(0.0, f64::max);
        assert!(
            value_err <= 1e-5 && grad_err <= 1e-4,
            "{name}, shape {shape:?}: loss {loss} vs {loss_ref} (error {value_err:.2e}), \
             gradient error {grad_err:.2e} of the largest component"
        );
    }
}

/// The input of case `name`: probabilities for the cases without an activation, else logits.
fn input<B: Backend>(name: &str, data: &HostData, device: &B::Device) -> Tensor<B, 4> {
    let values = if name.starts_with("None") {
        &data.probs
    } else {
        &data.x
    };
    Tensor::from_data(values.clone(), device)
}

/// The cases of [`compare_on`] on backend `B`.
fn cases<B: AutodiffBackend>(data: &HostData, device: &B::Device) -> Vec<(String, LossOf<B>)> {
    let c = data.shape[1];
    let dense = Tensor::<B, 4>::from_data(data.dense.clone(), device);
    let labels = Tensor::<B, 4, Int>::from_data(data.labels.clone(), device);
    let mask = Tensor::<B, 4>::from_data(data.mask.clone(), device);
    let soft = Tensor::<B, 4>::from_data(data.soft.clone(), device);
    let ignore = Some(c);
    // Without the last class: an empty class in every sample.
    let no_last = labels.clone().clamp_max(c as i64 - 2);
    let weights = |k: f32| {
        (0..c)
            .map(|i| 0.3 + (k * i as f32).sin().abs())
            .collect::<Vec<_>>()
    };
    let mut cases: Vec<(String, LossOf<B>)> = Vec::new();
    for activation in [Activation::None, Activation::Sigmoid, Activation::Softmax] {
        for (squared_pred, soft_label) in [(false, false), (true, false), (false, true)] {
            let config = DiceLossConfig::new()
                .with_activation(activation)
                .with_squared_pred(squared_pred)
                .with_soft_label(soft_label);
            let (d, l, m) = (dense.clone(), labels.clone(), mask.clone());
            let c = config.clone();
            cases.push((
                format!("{activation:?} sq={squared_pred} soft={soft_label} dense"),
                Box::new(move |x| c.init(&x.device()).forward(x, d.clone())),
            ));
            if soft_label {
                let (c, t) = (config.clone().with_jaccard(true), soft.clone());
                cases.push((
                    format!("{activation:?} soft_label jaccard soft target"),
                    Box::new(move |x| c.init(&x.device()).forward(x, t.clone())),
                ));
            }
            let c = config.clone().with_ignore_index(ignore);
            cases.push((
                format!("{activation:?} sq={squared_pred} soft={soft_label} indices+ignore"),
                Box::new(move |x| c.init(&x.device()).forward(x, l.clone())),
            ));
            let c = config
                .clone()
                .with_batch(true)
                .with_include_background(false);
            let d = if soft_label {
                soft.clone()
            } else {
                dense.clone()
            };
            cases.push((
                format!("{activation:?} sq={squared_pred} soft={soft_label} masked batch"),
                Box::new(move |x| c.init(&x.device()).forward_masked(x, d.clone(), m.clone())),
            ));
        }
    }
    let l = no_last.clone();
    cases.push((
        "dice softmax indices, one class empty".into(),
        Box::new(move |x| {
            DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .init(&x.device())
                .forward_no_reduction(x, l.clone())
                .sum()
        }),
    ));
    let l = labels.clone();
    cases.push((
        "generalized".into(),
        Box::new(move |x| {
            GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_ignore_index(ignore)
                .init(&x.device())
                .forward(x, l.clone())
        }),
    ));
    let l = labels.clone();
    cases.push((
        "generalized soft_label indices".into(),
        Box::new(move |x| {
            GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_soft_label(true)
                .with_ignore_index(ignore)
                .init(&x.device())
                .forward(x, l.clone())
        }),
    ));
    let t = soft.clone();
    cases.push((
        "generalized soft_label soft target".into(),
        Box::new(move |x| {
            GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Sigmoid)
                .with_soft_label(true)
                .init(&x.device())
                .forward(x, t.clone())
        }),
    ));
    let t = soft.clone();
    cases.push((
        "tversky soft_label soft target".into(),
        Box::new(move |x| {
            TverskyLossConfig::new()
                .with_activation(Activation::Sigmoid)
                .with_alpha(0.3)
                .with_beta(0.7)
                .with_soft_label(true)
                .init(&x.device())
                .forward(x, t.clone())
        }),
    ));
    let t = soft.clone();
    let c = DiceCELossConfig::new().with_dice(
        DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .with_soft_label(true),
    );
    cases.push((
        "dice-ce soft_label soft target".into(),
        Box::new(move |x| c.init(&x.device()).forward(x, t.clone())),
    ));
    let d = dense.clone();
    cases.push((
        "tversky".into(),
        Box::new(move |x| {
            TverskyLossConfig::new()
                .with_activation(Activation::Sigmoid)
                .with_alpha(0.3)
                .with_beta(0.7)
                .init(&x.device())
                .forward(x, d.clone())
        }),
    ));
    // DiceCE: the cross-entropy term, summed in the statistics pass of every kernel.
    let dice = DiceLossConfig::new().with_activation(Activation::Softmax);
    let l = labels.clone();
    let c = DiceCELossConfig::new()
        .with_dice(dice.clone().with_ignore_index(ignore))
        .with_ce_weight(Some(weights(0.7)))
        .with_label_smoothing(0.1);
    cases.push((
        "dice-ce indices+ignore weights smoothing".into(),
        Box::new(move |x| c.init(&x.device()).forward(x, l.clone())),
    ));
    let l = labels.clone();
    let c = DiceCELossConfig::new().with_dice(dice.clone().with_ignore_index(ignore));
    cases.push((
        "dice-ce indices no reduction".into(),
        Box::new(move |x| c.init(&x.device()).forward_no_reduction(x, l.clone()).sum()),
    ));
    let d = dense.clone();
    let c = DiceCELossConfig::new()
        .with_dice(dice.clone())
        .with_ce_weight(Some(weights(-0.1)))
        .with_label_smoothing(0.2);
    cases.push((
        "dice-ce dense weights smoothing".into(),
        Box::new(move |x| c.init(&x.device()).forward(x, d.clone())),
    ));
    let d = dense.clone();
    let c = DiceCELossConfig::new()
        .with_dice(DiceLossConfig::new().with_activation(Activation::Sigmoid))
        .with_pos_weight(Some(2.5));
    cases.push((
        "dice-ce binary pos_weight".into(),
        Box::new(move |x| {
            let x = x.narrow(1, 0, 1);
            c.init(&x.device()).forward(x, d.clone().narrow(1, 0, 1))
        }),
    ));
    // The cross-entropy's softmax beside a sigmoid Dice: its own normalizer in the same pass.
    let l = labels.clone();
    let c = DiceCELossConfig::new()
        .with_dice(
            DiceLossConfig::new()
                .with_activation(Activation::Sigmoid)
                .with_squared_pred(true)
                .with_ignore_index(ignore),
        )
        .with_ce_weight(Some(weights(0.4)))
        .with_lambda_ce(2.0);
    cases.push((
        "dice-ce sigmoid dice indices weights".into(),
        Box::new(move |x| c.init(&x.device()).forward(x, l.clone())),
    ));
    // DiceFocal: the focal term, summed there too.
    let l = labels.clone();
    let c = DiceFocalLossConfig::new()
        .with_dice(dice.clone().with_ignore_index(ignore))
        .with_gamma(1.5)
        .with_alpha(Some(0.25));
    cases.push((
        "dice-focal indices+ignore alpha".into(),
        Box::new(move |x| c.init(&x.device()).forward(x, l.clone())),
    ));
    let d = dense.clone();
    let c = DiceFocalLossConfig::new().with_dice(
        DiceLossConfig::new()
            .with_activation(Activation::Sigmoid)
            .with_include_background(false),
    );
    cases.push((
        "dice-focal dense no reduction".into(),
        Box::new(move |x| c.init(&x.device()).forward_no_reduction(x, d.clone()).sum()),
    ));
    cases
}

/// The panic message of `f`, or `None` if it returns.
pub(crate) fn panic_message(f: impl FnOnce()) -> Option<String> {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).err()?;
    Some(match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast::<&str>()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    })
}

/// The data checks left to the fused pass fail with the messages of the burn-ops checks,
/// on the fused path (`B`) and on the generic one, for every loss that defers them.
pub(crate) fn deferred_checks_on<B: Backend>(device: &B::Device) {
    let device = device.clone();
    let x = || Tensor::<B, 4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
    let nan_x = || x().slice_fill([1..2, 2..3, 3..4, 0..1], f32::NAN);
    let dense = || Tensor::<B, 4>::random([2, 3, 4, 5], Distribution::Bernoulli(0.5), &device);
    let labels = |bad: Option<i64>| {
        let l = Tensor::<B, 4, Int>::random([2, 1, 4, 5], Distribution::Uniform(0.0, 3.0), &device);
        match bad {
            Some(v) => l.slice_fill([1..2, 0..1, 2..3, 4..5], v),
            None => l,
        }
    };
    let mask = || Tensor::<B, 4>::ones([2, 1, 4, 5], &device);
    let input_message = |loss: &str| {
        format!("{loss}: `input` holds NaN or infinite values; expected finite numbers")
    };
    let dice = DiceLossConfig::new().with_activation(Activation::Softmax);
    // The expected message (`None`: no panic) and the call.
    type Case<'a> = (Option<String>, Box<dyn Fn() + 'a>);
    let cases: Vec<Case> = vec![
        (None, Box::new(|| drop(dice.init::<B>(&device).forward(x(), labels(None))))),
        (
            Some(input_message("DiceLoss")),
            Box::new(|| drop(dice.init::<B>(&device).forward(nan_x(), dense()))),
        ),
        (
            Some(input_message("DiceLoss")),
            Box::new(|| {
                drop(dice.init::<B>(&device).forward_masked(nan_x(), labels(None), mask()))
            }),
        ),
        (
            Some(crate::checks::dense_target_message("DiceLoss", "target")),
            Box::new(|| {
                let t = dense().slice_fill([0..1, 1..2, 0..1, 0..1], f32::INFINITY);
                drop(dice.init::<B>(&device).forward(x(), t))
            }),
        ),
        (
            // A target of 5.0 once gave a loss of 0.375 without a word.
            Some(crate::checks::dense_target_message("DiceLoss", "target")),
            Box::new(|| {
                let t = dense().slice_fill([1..2, 2..3, 3..4, 4..5], 5.0);
                drop(dice.init::<B>(&device).forward(x(), t))
            }),
        ),
        (
            Some(crate::checks::dense_target_message("DiceLoss", "target")),
            Box::new(|| {
                let t = dense().slice_fill([0..1, 0..1, 0..1, 0..1], -0.5);
                drop(dice.init::<B>(&device).forward(x(), t))
            }),
        ),
        (
            // Soft labels in [0, 1] pass.
            None,
            Box::new(|| {
                let t = Tensor::<B, 4>::random([2, 3, 4, 5], Distribution::Default, &device);
                drop(dice.init::<B>(&device).forward(x(), t))
            }),
        ),
        (
            Some("DiceLoss: `target` holds class index 7, expected 0..3 (input has 3 channel(s))".into()),
            Box::new(|| drop(dice.init::<B>(&device).forward(x(), labels(Some(7))))),
        ),
        (
            Some("DiceLoss: `target` holds class index -2, expected 0..3 (input has 3 channel(s)) or the ignore_index 255".into()),
            Box::new(|| {
                let loss = dice.clone().with_ignore_index(Some(255)).init::<B>(&device);
                drop(loss.forward(x(), labels(Some(-2))))
            }),
        ),
        (
            None,
            Box::new(|| {
                let loss = dice.clone().with_ignore_index(Some(255)).init::<B>(&device);
                drop(loss.forward(x(), labels(Some(255))))
            }),
        ),
        (
            Some(input_message("GeneralizedDiceLoss")),
            Box::new(|| {
                let loss = GeneralizedDiceLossConfig::new().init::<B>(&device);
                drop(loss.forward(nan_x(), labels(None)))
            }),
        ),
        (
            Some("TverskyLoss: `target` holds class index 3".into()),
            Box::new(|| {
                let loss = TverskyLossConfig::new().init::<B>(&device);
                drop(loss.forward(x(), labels(Some(3))))
            }),
        ),
        // Checks off: no panic, whatever the data.
        (
            None,
            Box::new(|| {
                let loss = dice.clone().with_check_inputs(false).init::<B>(&device);
                drop(loss.forward(nan_x(), labels(None)))
            }),
        ),
    ];
    for (i, (expected, case)) in cases.iter().enumerate() {
        for generic in [false, true] {
            // On a device backend a failure may be reported after the call returned.
            let run = || {
                panic_message(|| {
                    case();
                    crate::wait_for_checks();
                })
            };
            let got = if generic { generic_only(run) } else { run() };
            match (expected, &got) {
                (None, None) => {}
                (Some(e), Some(g)) if g.starts_with(e.as_str()) => {}
                _ => {
                    panic!("case {i} (generic path: {generic}): expected {expected:?}, got {got:?}")
                }
            }
        }
    }
}
