//! Properties of the losses and the metric on random cases, on the burn 0.22 line: the 0.21
//! line's `tests/src/props.rs` (its property tests and 10⁶-case soak), on the same random cases
//! and f64 reference of the burn-free core (`burn_dice_core::testing::props`).
//!
//! One [`Case`] is a shape (rank 3-5, 1-8 classes, sizes that cross the CPU kernels' block
//! boundaries, and now and then their job boundaries and threading threshold), a target kind (class indices, one-hot, soft), the options of `DiceLoss` and
//! data seeds. [`check`] runs it on burn-flex and checks:
//! - the fused kernels ≡ the generic burn-ops path ≡ an independent f64 loop of the formula
//!   (values within [`VALUE_TOL`], relative, of the largest) and the gradients of both f32
//!   paths against the generic path in f64 (within [`GRAD_TOL`] of the largest component, or
//!   of [`GRAD_FLOOR`] when all are smaller; [`GRAD_TOL_SATURATED`] with saturated logits), for `DiceLoss` (every option, masks, `ignore_index`),
//!   `GeneralizedDiceLoss`, `TverskyLoss`, `DiceCELoss` and `DiceFocalLoss`;
//! - finite values and gradients (every case has `smooth_dr > 0`), and `1 − dice ∈ [0, 1]`;
//! - batch splitting: each sample's losses equal those of the sample alone (without `batch`);
//! - class permutation: permuting the classes of input and dense target permutes the losses;
//! - the metric's counts against a plain counting loop.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn_dice::kernels::generic_only;
use burn_dice::metric::{DiceCounts, EmptyPolicy};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceReduction, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig, WeightType,
};
use burn_dice_core::testing::props::{grad_err_floor, reference, value_err, worst_entry, Data};
pub use burn_dice_core::testing::props::{
    random_case, Case, Outcome, TargetKind, GRAD_FLOOR, GRAD_TOL, GRAD_TOL_SATURATED, VALUE_TOL,
};

/// The case's activation as burn-dice's.
fn activation(case: &Case) -> Activation {
    match case.activation {
        0 => Activation::None,
        1 => Activation::Sigmoid,
        _ => Activation::Softmax,
    }
}

/// The case's `DiceLoss` options (its smoothing and class weights as the f64 reference takes
/// them).
fn dice_config(case: &Case) -> DiceLossConfig {
    let (smooth_nr, smooth_dr) = case.smooth();
    DiceLossConfig::new()
        .with_activation(activation(case))
        .with_squared_pred(case.squared_pred)
        .with_jaccard(case.jaccard)
        .with_batch(case.batch_sums)
        .with_include_background(case.include_background)
        .with_ignore_index(case.ignore_index())
        .with_weight(case.class_weights())
        .with_log_loss(case.log_loss)
        .with_soft_label(case.soft_label)
        .with_smooth_nr(smooth_nr)
        .with_smooth_dr(smooth_dr)
        .with_reduction(DiceReduction::Mean)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("floats")
}

fn shape_of<const D: usize>(case: &Case, channels: usize) -> [usize; D] {
    let mut s = [0; D];
    s[0] = case.batch;
    s[1] = channels;
    for (k, v) in case.spatial.iter().enumerate() {
        s[2 + k] = *v;
    }
    s
}

/// Every loss of the family, unreduced, with its input gradient (of the sum of a fixed
/// weighting of the unreduced values, so that every entry counts).
/// The case's input `[b, c, *spatial]`: its f32 values, in `dtype`.
fn input_tensor<const D: usize>(
    case: &Case,
    data: &Data,
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(
            data.input.iter().map(|&v| v as f32).collect(),
            shape_of::<D>(case, case.classes),
        ),
        (device, dtype),
    )
}

/// The case's target: class indices or a dense `[b, c, *spatial]` one.
fn target_tensor<const D: usize>(case: &Case, data: &Data, device: &Device) -> DiceTarget<D> {
    match case.target {
        TargetKind::Indices => Tensor::<D, Int>::from_data(
            TensorData::new(data.labels.clone(), shape_of::<D>(case, 1)),
            device,
        )
        .into(),
        _ => Tensor::<D>::from_data(
            TensorData::new(
                data.target.iter().map(|&v| v as f32).collect(),
                shape_of::<D>(case, case.classes),
            ),
            device,
        )
        .into(),
    }
}

/// `DiceLoss` of the case on `x`, unreduced (`forward_masked_no_reduction` with a mask).
fn dice_forward<const D: usize>(
    case: &Case,
    x: Tensor<D>,
    data: &Data,
    device: &Device,
) -> Tensor<2> {
    let loss = dice_config(case).init(device);
    let target = target_tensor::<D>(case, data, device);
    if case.mask {
        let mask = Tensor::<D>::from_data(
            TensorData::new(
                data.mask.iter().map(|&v| v as f32).collect(),
                shape_of::<D>(case, 1),
            ),
            device,
        );
        loss.forward_masked_no_reduction(x, target, mask)
    } else {
        loss.forward_no_reduction(x, target)
    }
}

/// `DiceLoss`'s values alone, without autodiff (for the relations between cases).
fn dice_values<const D: usize>(case: &Case, data: &Data, device: &Device) -> Vec<f64> {
    to_vec(dice_forward(
        case,
        input_tensor::<D>(case, data, device, DType::F32),
        data,
        device,
    ))
}

fn family<const D: usize>(
    case: &Case,
    data: &Data,
    device: &Device,
    dtype: DType,
) -> Vec<(&'static str, Vec<f64>, Vec<f64>)> {
    let input = || input_tensor::<D>(case, data, device, dtype).require_grad();
    let run = |name: &'static str, f: &dyn Fn(Tensor<D>) -> Tensor<2>| {
        let x = input();
        let out = f(x.clone());
        let values = to_vec(out.clone().detach());
        let k = values.len();
        let weights = Tensor::<1>::from_floats(
            (0..k)
                .map(|j| 1.0 + (j % 5) as f32 * 0.25)
                .collect::<Vec<_>>()
                .as_slice(),
            device,
        )
        .reshape(out.dims())
        .cast(out.dtype());
        let grads = (out * weights).sum().backward();
        let g = to_vec(x.grad(&grads).expect("input gradient"));
        (name, values, g)
    };
    let mut out = vec![run("DiceLoss", &|x| dice_forward(case, x, data, device))];
    let target = || target_tensor::<D>(case, data, device);
    let c = case.classes;
    let dice = dice_config(case);
    let act = activation(case);
    out.push(run("GeneralizedDiceLoss", &|x| {
        GeneralizedDiceLossConfig::new()
            .with_activation(act)
            .with_weight_type(
                [WeightType::Square, WeightType::Simple, WeightType::Uniform]
                    [(case.seed % 3) as usize],
            )
            .with_include_background(case.include_background)
            .with_batch(case.batch_sums)
            .with_soft_label(case.soft_label)
            .with_ignore_index(case.ignore_index())
            .init(device)
            .forward_no_reduction(x, target())
    }));
    out.push(run("TverskyLoss", &|x| {
        TverskyLossConfig::new()
            .with_activation(act)
            .with_include_background(case.include_background)
            // α, β (the false positives' and negatives' weights) from {0.1, 0.3, …, 0.9}: at
            // α = β = 0 the loss is 0 everywhere and its f32 gradient is rounding noise.
            .with_alpha(0.1 + 0.2 * (case.seed / 3 % 5) as f64)
            .with_beta(0.1 + 0.2 * (case.seed / 15 % 5) as f64)
            .with_gamma(if case.log_loss { 0.75 } else { 1.0 })
            .with_batch(case.batch_sums)
            .with_soft_label(case.soft_label)
            .with_ignore_index(case.ignore_index())
            .init(device)
            .forward_no_reduction(x, target())
    }));
    // The CE and focal terms work on logits: not with `Activation::None`.
    if case.activation != 0 {
        let plain = dice.clone().with_weight(None);
        out.push(run("DiceCELoss", &|x| {
            let ce_weight = (case.weights && c > 1)
                .then(|| (0..c).map(|k| 0.5 + 0.5 * (k % 3) as f32).collect());
            DiceCELossConfig::new()
                .with_dice(plain.clone())
                .with_ce_weight(ce_weight)
                .with_pos_weight((case.weights && c == 1).then_some(2.0))
                .with_label_smoothing(if case.weights { 0.1 } else { 0.0 })
                .init(device)
                .forward_no_reduction(x, target())
        }));
        out.push(run("DiceFocalLoss", &|x| {
            DiceFocalLossConfig::new()
                .with_dice(plain.clone())
                .with_alpha(case.weights.then_some(0.25))
                .init(device)
                .forward_no_reduction(x, target())
        }));
    }
    out
}

/// The metric's counts against a plain loop, on argmax predictions (2+ classes).
fn metric_matches_counting<const D: usize>(
    case: &Case,
    data: &Data,
    device: &Device,
) -> Result<(), String> {
    let (b, c, n) = (case.batch, case.classes, case.pixels());
    if c < 2 || case.target != TargetKind::Indices {
        return Ok(());
    }
    let pred: Vec<i64> = (0..b * n)
        .map(|k| {
            let (bi, px) = (k / n, k % n);
            (0..c)
                .max_by(|&i, &j| {
                    // In f32, as the backend compares them; ties go to the lower index.
                    let v = |k: usize| data.input[(bi * c + k) * n + px] as f32;
                    v(i).total_cmp(&v(j)).then(j.cmp(&i))
                })
                .unwrap() as i64
        })
        .collect();
    let to = |v: &Vec<i64>| {
        Tensor::<D, Int>::from_data(TensorData::new(v.clone(), shape_of::<D>(case, 1)), device)
    };
    let counts = DiceCounts::new(to(&pred), to(&data.labels), c, case.ignore_index());
    let got = to_vec(counts.dice(true, EmptyPolicy::NaN));
    let mut expected = Vec::new();
    for bi in 0..b {
        for ci in 0..c as i64 {
            let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
            for px in 0..n {
                let (p, t) = (pred[bi * n + px], data.labels[bi * n + px]);
                if case.ignore_index() == Some(t as usize) {
                    continue;
                }
                match (p == ci, t == ci) {
                    (true, true) => tp += 1.0,
                    (true, false) => fp += 1.0,
                    (false, true) => fn_ += 1.0,
                    _ => {}
                }
            }
            expected.push(if tp + fn_ == 0.0 {
                f64::NAN
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            });
        }
    }
    for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
        let same = (g.is_nan() && e.is_nan()) || (g - e).abs() < 1e-6;
        if !same {
            return Err(format!("metric: entry {k}: {g} vs counted {e}"));
        }
    }
    Ok(())
}

/// Every loss's values and gradients, by name.
type Family = Vec<(&'static str, Vec<f64>, Vec<f64>)>;

fn check_on<const D: usize>(
    backend: &str,
    case: &Case,
    data: &Data,
    expected: &Expected,
    device: &Device,
) -> Result<Outcome, String> {
    let fail = |what: String| Err(format!("{backend}: {what}"));
    let fused = family::<D>(case, data, device, DType::F32);
    let generic = generic_only(|| family::<D>(case, data, device, DType::F32));
    let mut outcome = Outcome::default();
    for (((name, v, g), (_, gv, gg)), (_, v64, g64)) in
        fused.iter().zip(&generic).zip(&expected.family)
    {
        if v.iter().chain(g).any(|x| !x.is_finite()) {
            return fail(format!(
                "{name}: non-finite value or gradient: {v:?}, {g:?}"
            ));
        }
        let ve = value_err(v, gv).max(value_err(v, v64));
        let floor = GRAD_FLOOR;
        let (fused_err, generic_err) = (
            grad_err_floor(g, g64, floor),
            grad_err_floor(gg, g64, floor),
        );
        let ge = fused_err.max(generic_err);
        // Both f32 paths off f64 in the same way: f32 cancellation, not a bug of either.
        let agree = grad_err_floor(g, gg, floor) <= GRAD_TOL;
        let ill_conditioned = !case.extreme && ge > GRAD_TOL && agree;
        outcome = outcome.merge(Outcome {
            value_err: ve,
            grad_err: if case.extreme || ill_conditioned {
                0.0
            } else {
                ge
            },
            grad_err_saturated: if case.extreme { ge } else { 0.0 },
            grad_err_ill_conditioned: if ill_conditioned { ge } else { 0.0 },
        });
        if ve > VALUE_TOL {
            return fail(format!(
                "{name}: fused {v:?} vs generic {gv:?} vs f64 {v64:?} (rel. {ve:.2e})"
            ));
        }
        let tol = if case.extreme || ill_conditioned {
            GRAD_TOL_SATURATED
        } else {
            GRAD_TOL
        };
        if ge > tol {
            return fail(
                format!(
                    "{name}: gradients off the f64 ones by {:.2e} (fused) and {:.2e} (generic) of \
                 the largest",
                    fused_err, generic_err
                ) + &if fused_err >= generic_err {
                    "; fused".to_string() + &worst_entry(g, g64)
                } else {
                    "; generic".to_string() + &worst_entry(gg, g64)
                },
            );
        }
    }
    let ve = value_err(&fused[0].1, &expected.dice);
    outcome.value_err = outcome.value_err.max(ve);
    if ve > VALUE_TOL {
        return fail(format!(
            "DiceLoss: {:?} vs f64 reference {:?} (rel. {ve:.2e})",
            fused[0].1, expected.dice
        ));
    }
    if !case.log_loss && !case.weights {
        if let Some(v) = fused[0]
            .1
            .iter()
            .find(|v| !(-1e-6..=1.0 + 1e-6).contains(*v))
        {
            return fail(format!("DiceLoss: 1 − dice = {v} outside [0, 1]"));
        }
    }
    metric_matches_counting::<D>(case, data, device).map_err(|e| format!("{backend}: {e}"))?;
    Ok(outcome)
}

/// The properties that relate cases to each other (batch splitting, class permutation), on the
/// f64 reference and the fused path of flex.
fn relations<const D: usize>(case: &Case, device: &Device) -> Result<(), String> {
    let data = case.data();
    let whole = &dice_values::<D>(case, &data, device);
    let (b, c, n) = (case.batch, case.classes, case.pixels());
    if !case.batch_sums && b > 1 {
        let kept = whole.len() / b;
        for bi in 0..b {
            let one = Case {
                batch: 1,
                ..case.clone()
            };
            let slice = |v: &Vec<f64>, per: usize| v[bi * per..(bi + 1) * per].to_vec();
            let part = Data {
                input: slice(&data.input, c * n),
                target: slice(&data.target, c * n),
                labels: data.labels[bi * n..(bi + 1) * n].to_vec(),
                mask: slice(&data.mask, n),
            };
            let alone = &dice_values::<D>(&one, &part, device);
            let err = value_err(alone, &whole[bi * kept..(bi + 1) * kept]);
            if err > VALUE_TOL {
                return Err(format!(
                    "batch splitting: sample {bi}: {alone:?} vs {whole:?}"
                ));
            }
        }
    }
    if case.target != TargetKind::Indices && case.include_background && !case.weights && c > 1 {
        // Reverse the classes of input and target: the per-class losses reverse.
        let rev = |v: &Vec<f64>| {
            let mut out = v.clone();
            for bi in 0..b {
                for ci in 0..c {
                    let (from, to) = ((bi * c + ci) * n, (bi * c + (c - 1 - ci)) * n);
                    out[to..to + n].copy_from_slice(&v[from..from + n]);
                }
            }
            out
        };
        let permuted = Data {
            input: rev(&data.input),
            target: rev(&data.target),
            labels: data.labels.clone(),
            mask: data.mask.clone(),
        };
        let got = &dice_values::<D>(case, &permuted, device);
        let rows = got.len() / c;
        let expected: Vec<f64> = (0..rows)
            .flat_map(|r| (0..c).rev().map(move |ci| whole[r * c + ci]))
            .collect();
        let err = value_err(got, &expected);
        if err > VALUE_TOL {
            return Err(format!("class permutation: {got:?} vs {expected:?}"));
        }
    }
    Ok(())
}

/// What every backend of a case is checked against, computed once per case: every loss on
/// the generic path in f64 (values and the gradients' reference), and the independent f64
/// loop of `DiceLoss`'s formula.
struct Expected {
    family: Family,
    dice: Vec<f64>,
}

fn expected<const D: usize>(case: &Case, data: &Data) -> Expected {
    Expected {
        family: generic_only(|| family::<D>(case, data, &Device::flex().autodiff(), DType::F64)),
        dice: reference(case, data),
    }
}

/// Checks every property of `case` on burn-flex (the kernels and the generic path).
pub fn check(case: &Case) -> Result<Outcome, String> {
    let case = case.clone().normalized();
    let device = Device::flex().autodiff();
    macro_rules! ranked {
        ($d:literal) => {{
            let data = case.data();
            let expected = expected::<$d>(&case, &data);
            let flex = check_on::<$d>("flex", &case, &data, &expected, &device)?;
            relations::<$d>(&case, &Device::flex())?;
            Ok(flex)
        }};
    }
    match case.spatial.len() {
        1 => ranked!(3),
        2 => ranked!(4),
        3 => ranked!(5),
        k => Err(format!("{k} spatial dims: expected 1 to 3")),
    }
}

/// With `soft_label`, a prediction equal to its soft target scores 0 (the smoothing terms are
/// equal, so `dice(t, t) = 1` exactly): `DiceLoss` with the case's options (`squared_pred`,
/// `jaccard`, `batch`, masks, weights, `log_loss`, empty classes), `GeneralizedDiceLoss` with
/// each weight type and `TverskyLoss` with any `α`, `β` (and `γ = 1`), on the kernels and the
/// generic path of burn-flex. The case's input is replaced by its target (no activation).
pub fn zero_at_the_target(case: &Case) -> Result<(), String> {
    let case = Case {
        activation: 0,
        target: TargetKind::Soft,
        soft_label: true,
        ignore: false,
        extreme: false,
        ..case.clone()
    }
    .normalized();
    let mut data = case.data();
    data.input = data.target.clone();
    macro_rules! ranked {
        ($d:literal) => {{
            let device = Device::flex().autodiff();
            for generic in [false, true] {
                let family = if generic {
                    generic_only(|| family::<$d>(&case, &data, &device, DType::F32))
                } else {
                    family::<$d>(&case, &data, &device, DType::F32)
                };
                for (name, values, _) in family.iter().take(3) {
                    if let Some(v) = values.iter().find(|v| v.abs() > 1e-6) {
                        return Err(format!(
                            "{name} (generic path: {generic}): loss(t, t) = {v}, expected 0"
                        ));
                    }
                }
            }
            Ok(())
        }};
    }
    match case.spatial.len() {
        1 => ranked!(3),
        2 => ranked!(4),
        3 => ranked!(5),
        k => Err(format!("{k} spatial dims: expected 1 to 3")),
    }
}
