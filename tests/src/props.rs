//! Properties of the losses and the metric on random cases, shared by the property tests
//! (`tests/proptests.rs`, proptest with shrinking) and the soak binary (`soak`, 10⁶ cases).
//!
//! One [`Case`] is a shape (rank 3-5, 1-8 classes, sizes that cross the CPU kernels' block
//! boundaries, and now and then their job boundaries and threading threshold), a target kind (class indices, one-hot, soft), the options of `DiceLoss` and
//! data seeds. [`check`] runs it on burn-flex and burn-ndarray and checks:
//! - the fused kernels ≡ the generic burn-ops path ≡ an independent f64 loop of the formula
//!   (values within [`VALUE_TOL`], relative, of the largest) and the gradients of both f32
//!   paths against the generic path in f64 (within [`GRAD_TOL`] of the largest component, or
//!   of [`GRAD_FLOOR`] when all are smaller; [`GRAD_TOL_SATURATED`] with saturated logits), for `DiceLoss` (every option, masks, `ignore_index`),
//!   `GeneralizedDiceLoss`, `TverskyLoss`, `DiceCELoss` and `DiceFocalLoss`;
//! - finite values and gradients (every case has `smooth_dr > 0`), and `1 − dice ∈ [0, 1]`;
//! - batch splitting: each sample's losses equal those of the sample alone (without `batch`);
//! - class permutation: permuting the classes of input and dense target permutes the losses;
//! - the metric's counts against a plain counting loop.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_dice::kernels::generic_only;
use burn_dice::metric::{DiceCounts, EmptyPolicy};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceReduction, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig, WeightType,
};

/// Relative tolerance on loss values (of the largest value compared).
pub const VALUE_TOL: f64 = 1e-5;
/// Tolerance on gradients, relative to the largest component.
pub const GRAD_TOL: f64 = 1e-4;
/// The tolerance for gradients that f32 cannot resolve to [`GRAD_TOL`]:
/// - with saturated logits (`Case::extreme`, |x| up to 60): both f32 paths compute
///   `σ' = σ·(1 − σ)` (burn's sigmoid backward and the fused kernels alike), which cancels in
///   f32 once `σ` is within 1e-7·(1/σ') of 1: a gradient of 3e-5 came out 5e-4 off,
///   relatively, the same on both paths (found by these tests; see the note on `σ(x)·σ(−x)`
///   in TESTING.md);
/// - where both f32 paths agree with each other to [`GRAD_TOL`] but not with f64 (ill
///   conditioned): `∂dice/∂pᵢ = 2tᵢ/D − N/D²` is a difference that vanishes at `tᵢ = N/(2D)`,
///   and f32 resolves it only to ~6e-8 of its terms. The soak found one pixel with
///   `t = 0.0022` (`2t/D = 6.7478e-3`, `N/D² = 6.7483e-3`) whose only gradient, 2.57e-5
///   with `log_loss`, came out 1.1e-3 off on both paths alike; every component was that small
///   (2.8e-8 absolute: within [`GRAD_FLOOR`]'s 1e-7 today, so no known case needs this rule
///   now; it stays for larger gradients that cancel the same way).
pub const GRAD_TOL_SATURATED: f64 = 1e-2;

/// The kind of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Class indices `[batch, 1, *spatial]`.
    Indices,
    /// One-hot `[batch, class, *spatial]`.
    OneHot,
    /// Soft labels in `[0, 1]`.
    Soft,
}

/// One random case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub classes: usize,
    /// Spatial sizes (1 to 3 of them).
    pub spatial: Vec<usize>,
    /// Target kind.
    pub target: TargetKind,
    /// 0: none (the input is a probability), 1: sigmoid, 2: softmax.
    pub activation: u8,
    /// `squared_pred`.
    pub squared_pred: bool,
    /// `jaccard`.
    pub jaccard: bool,
    /// `batch` (sums over the batch).
    pub batch_sums: bool,
    /// `include_background`.
    pub include_background: bool,
    /// `ignore_index` (class-index targets only): the label `classes` is ignored.
    pub ignore: bool,
    /// `forward_masked` with a random 0/1 mask.
    pub mask: bool,
    /// Class weights.
    pub weights: bool,
    /// `log_loss`.
    pub log_loss: bool,
    /// `soft_label` (on `DiceLoss`, `GeneralizedDiceLoss`, `TverskyLoss` and the Dice part of
    /// `DiceCELoss` and `DiceFocalLoss`).
    pub soft_label: bool,
    /// Logits scaled by 60 (saturated softmax and sigmoid).
    pub extreme: bool,
    /// Class 1 absent from the target (an empty class).
    pub empty_class: bool,
    /// More than one job of the CPU kernels per sample (16,384 pixels) and enough elements
    /// (65,536) for their threads: `spatial` is replaced by one of that size.
    pub large: bool,
    /// Seed of the data.
    pub seed: u64,
}

/// What a case measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// The largest relative difference of values (any two of fused, generic, reference).
    pub value_err: f64,
    /// The largest gradient difference relative to the largest component.
    pub grad_err: f64,
    /// The same for cases with saturated logits.
    pub grad_err_saturated: f64,
    /// The same for the ill-conditioned gradients of unsaturated cases: both f32 paths agree
    /// with each other to [`GRAD_TOL`] but not with f64 (see [`GRAD_TOL_SATURATED`]); 0 when
    /// the case had none.
    pub grad_err_ill_conditioned: f64,
}

impl Outcome {
    /// The worse of two outcomes, error by error.
    pub fn merge(self, other: Outcome) -> Outcome {
        Outcome {
            value_err: self.value_err.max(other.value_err),
            grad_err: self.grad_err.max(other.grad_err),
            grad_err_saturated: self.grad_err_saturated.max(other.grad_err_saturated),
            grad_err_ill_conditioned: self
                .grad_err_ill_conditioned
                .max(other.grad_err_ill_conditioned),
        }
    }
}

/// Deterministic values in `[0, 1)`.
fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut r = crate::XorShift::new(seed);
    (0..n).map(|_| r.unit()).collect()
}

/// The case's data, flat, in f64: input `[b, c, n]`, dense target `[b, c, n]` (the one-hot of
/// the labels for index targets, 0 at ignored pixels), labels `[b, n]`, mask `[b, n]`.
struct Data {
    input: Vec<f64>,
    target: Vec<f64>,
    labels: Vec<i64>,
    mask: Vec<f64>,
}

impl Case {
    fn pixels(&self) -> usize {
        self.spatial.iter().product()
    }

    fn activation(&self) -> Activation {
        match self.activation {
            0 => Activation::None,
            1 => Activation::Sigmoid,
            _ => Activation::Softmax,
        }
    }

    /// The case made consistent: softmax needs 2+ channels, `ignore_index` index targets.
    pub fn normalized(mut self) -> Case {
        if self.large {
            let extra = self.spatial.iter().sum::<usize>() % 300;
            self.spatial = if self.spatial.len() == 2 {
                vec![128, 129 + extra % 12]
            } else {
                vec![16_384 + 1 + extra]
            };
            self.classes = self.classes.max(4);
        }
        if self.classes == 1 && self.activation == 2 {
            self.activation = 1;
        }
        if self.target != TargetKind::Indices {
            self.ignore = false;
        }
        self
    }

    fn ignore_index(&self) -> Option<usize> {
        self.ignore.then_some(self.classes.max(2))
    }

    fn data(&self) -> Data {
        let (b, c, n) = (self.batch, self.classes, self.pixels());
        let u = uniform(b * c * n, self.seed);
        let input: Vec<f64> = u
            .iter()
            .map(|&v| match (self.activation, self.extreme) {
                (0, _) => v,
                (_, false) => (v - 0.5) * 6.0,
                (_, true) => (v - 0.5) * 120.0,
            })
            .collect();
        let n_labels = c.max(2) as f64;
        let labels: Vec<i64> = uniform(b * n, self.seed ^ 0xA5A5)
            .iter()
            .map(|&v| {
                if self.ignore && v < 0.15 {
                    return c.max(2) as i64;
                }
                let l = ((v * n_labels) as i64).min(n_labels as i64 - 1);
                match (self.empty_class, c > 1) {
                    // Class 1 absent: its pixels go to class 0.
                    (true, true) if l == 1 => 0,
                    _ => l,
                }
            })
            .collect();
        let soft = uniform(b * c * n, self.seed ^ 0x5A5A);
        let mut target = vec![0.0; b * c * n];
        for bi in 0..b {
            for ci in 0..c {
                for p in 0..n {
                    let l = labels[bi * n + p];
                    let hot = if c == 1 { l == 1 } else { l == ci as i64 };
                    target[(bi * c + ci) * n + p] = match self.target {
                        TargetKind::Soft if !(self.empty_class && ci == 1) => {
                            soft[(bi * c + ci) * n + p]
                        }
                        TargetKind::Soft => 0.0,
                        _ => f64::from(u8::from(hot)),
                    };
                }
            }
        }
        if self.soft_label && self.target == TargetKind::Soft {
            // `|p − t|` has a kink at `p = t`, where a gradient in f32 and one in f64 can take
            // different sides (both valid subgradients): soft targets within 1e-6 of the
            // prediction are moved 1e-6 away (f32 computes `p` to about 1e-7).
            for (t, p) in target.iter_mut().zip(probabilities(self, &input)) {
                if (*t - p).abs() < 1e-6 {
                    *t = if p < 0.5 { p + 1e-6 } else { p - 1e-6 };
                }
            }
        }
        let mask = if self.mask {
            uniform(b * n, self.seed ^ 0x3C3C)
                .iter()
                .map(|&v| f64::from(u8::from(v < 0.7)))
                .collect()
        } else {
            vec![1.0; b * n]
        };
        Data {
            input,
            target,
            labels,
            mask,
        }
    }

    fn dice_config(&self) -> DiceLossConfig {
        let kept = if self.include_background || self.classes == 1 {
            self.classes
        } else {
            self.classes - 1
        };
        DiceLossConfig::new()
            .with_activation(self.activation())
            .with_squared_pred(self.squared_pred)
            .with_jaccard(self.jaccard)
            .with_batch(self.batch_sums)
            .with_include_background(self.include_background)
            .with_ignore_index(self.ignore_index())
            .with_weight(
                self.weights
                    .then(|| (0..kept).map(|k| 0.25 + 0.5 * (k % 3) as f32).collect()),
            )
            .with_log_loss(self.log_loss)
            .with_soft_label(self.soft_label)
            .with_reduction(DiceReduction::Mean)
    }
}

/// The activation of `input` (`[b, c, n]`) in f64.
fn probabilities(case: &Case, input: &[f64]) -> Vec<f64> {
    let (b, c, n) = (case.batch, case.classes, case.pixels());
    let mut p = vec![0.0; b * c * n];
    for bi in 0..b {
        for px in 0..n {
            let at = |ci: usize| (bi * c + ci) * n + px;
            match case.activation {
                0 => (0..c).for_each(|ci| p[at(ci)] = input[at(ci)]),
                1 => (0..c).for_each(|ci| p[at(ci)] = 1.0 / (1.0 + (-input[at(ci)]).exp())),
                _ => {
                    let m = (0..c).map(|ci| input[at(ci)]).fold(f64::MIN, f64::max);
                    let z: f64 = (0..c).map(|ci| (input[at(ci)] - m).exp()).sum();
                    (0..c).for_each(|ci| p[at(ci)] = (input[at(ci)] - m).exp() / z);
                }
            }
        }
    }
    p
}

/// The f64 loop of the formula (`DiceLoss::forward_no_reduction`, see its docs): one value per
/// sample (or one row with `batch`) and kept class.
fn reference(case: &Case, data: &Data) -> Vec<f64> {
    let (b, c, n) = (case.batch, case.classes, case.pixels());
    let p = probabilities(case, &data.input);
    let first = usize::from(!case.include_background && c > 1);
    let rows = if case.batch_sums { 1 } else { b };
    let mut out = Vec::new();
    let config = case.dice_config();
    for row in 0..rows {
        for ci in first..c {
            let (mut i, mut ps, mut ts) = (0.0, 0.0, 0.0);
            for bi in 0..b {
                if !case.batch_sums && bi != row {
                    continue;
                }
                for px in 0..n {
                    let keep = data.mask[bi * n + px]
                        * f64::from(u8::from(
                            case.ignore_index() != Some(data.labels[bi * n + px] as usize),
                        ));
                    let at = (bi * c + ci) * n + px;
                    let (pv, tv) = (p[at] * keep, data.target[at] * keep);
                    if case.soft_label && !case.squared_pred {
                        // Wang & Blaschko's L1 form (MONAI 1.6's soft_label):
                        // `(|p| + |t| − |p − t|)/2`, which is `min(|p|, |t|)` where `p` and
                        // `t` have the same sign and 0 elsewhere (computed so, it does not
                        // cancel).
                        if pv * tv > 0.0 {
                            i += pv.abs().min(tv.abs());
                        }
                        ps += pv.abs();
                        ts += tv.abs();
                        continue;
                    }
                    i += pv * tv;
                    if case.squared_pred {
                        ps += pv * pv;
                        ts += tv * tv;
                    } else {
                        ps += pv;
                        ts += tv;
                    }
                }
            }
            let (snr, sdr) = (config.smooth_nr, config.smooth_dr);
            let f = if case.jaccard {
                (2.0 * i + snr) / (2.0 * (ps + ts - i) + sdr)
            } else {
                (2.0 * i + snr) / (ps + ts + sdr)
            };
            // As documented (and in MONAI): no weight when one class is kept.
            let w = match &config.weight {
                Some(w) if c - first > 1 => f64::from(w[ci - first]),
                _ => 1.0,
            };
            out.push(w * if case.log_loss { -f.ln() } else { 1.0 - f });
        }
    }
    out
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
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

/// `max |a − b| / max(|a|, |b|, 1)` over the entries (values near 0 compared absolutely).
fn value_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "value counts differ");
    let scale = a.iter().chain(b).fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// Below this, gradients are compared absolutely (to within `GRAD_TOL · GRAD_FLOOR = 1e-7`,
/// f32's resolution of a quantity of order 1):
/// - a gradient that is 0 in f64 comes out a few 1e-9 in f32 (Tversky with α = β = 0: the
///   loss is 0 everywhere);
/// - a loss constant along the softmax (`∂L/∂p_c = g` for every class) has a logit gradient
///   `p_c (g − Σ_k p_k g)` that is 0 in f64, but `p_c · g · (1 − Σ_k p_k)` in f32, with
///   `Σ_k p_k` a rounding off 1: the soak found 1.5e-8 on burn's softmax backward (the generic
///   path; `g ≈ 0.25`), where this floor was 1e-4 (an absolute 1e-8). The fused kernels
///   refine the dot product and give 0 there;
/// - with saturated logits (`σ(−60) ≈ 1e-26`) every component can be tiny and the f32 paths
///   differ by underflow alone (the generic path loses the Dice term's `4e-27` beside the
///   cross-entropy's in one case found).
pub const GRAD_FLOOR: f64 = 1e-3;

/// The entry where `a` and `b` differ most, and the largest component, for a message.
fn worst_entry(a: &[f64], b: &[f64]) -> String {
    let (k, _) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0.0), |m, (k, d)| if d > m.1 { (k, d) } else { m });
    let largest = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    format!(
        ": entry {k}, {} vs f64 {} (largest {largest:.3e})",
        a[k], b[k]
    )
}

/// `max |a − b|` relative to the largest component (or to `floor`).
fn grad_err_floor(a: &[f64], b: &[f64], floor: f64) -> f64 {
    let scale = a.iter().chain(b).fold(floor, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// Every loss of the family, unreduced, with its input gradient (of the sum of a fixed
/// weighting of the unreduced values, so that every entry counts).
/// The case's input `[b, c, *spatial]` in f32.
fn input_tensor<B: Backend, const D: usize>(
    case: &Case,
    data: &Data,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(
        TensorData::new(
            data.input.iter().map(|&v| v as f32).collect(),
            shape_of::<D>(case, case.classes),
        ),
        device,
    )
}

/// The case's target: class indices or a dense `[b, c, *spatial]` one.
fn target_tensor<B: Backend, const D: usize>(
    case: &Case,
    data: &Data,
    device: &B::Device,
) -> DiceTarget<B, D> {
    match case.target {
        TargetKind::Indices => Tensor::<B, D, Int>::from_data(
            TensorData::new(data.labels.clone(), shape_of::<D>(case, 1)),
            device,
        )
        .into(),
        _ => Tensor::<B, D>::from_data(
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
fn dice_forward<B: Backend, const D: usize>(
    case: &Case,
    x: Tensor<B, D>,
    data: &Data,
    device: &B::Device,
) -> Tensor<B, 2> {
    let loss = case.dice_config().init::<B>(device);
    let target = target_tensor::<B, D>(case, data, device);
    if case.mask {
        let mask = Tensor::<B, D>::from_data(
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
fn dice_values<B: Backend, const D: usize>(
    case: &Case,
    data: &Data,
    device: &B::Device,
) -> Vec<f64> {
    to_vec(dice_forward(
        case,
        input_tensor::<B, D>(case, data, device),
        data,
        device,
    ))
}

fn family<B: AutodiffBackend, const D: usize>(
    case: &Case,
    data: &Data,
    device: &B::Device,
) -> Vec<(&'static str, Vec<f64>, Vec<f64>)> {
    let input = || input_tensor::<B, D>(case, data, device).require_grad();
    let run = |name: &'static str, f: &dyn Fn(Tensor<B, D>) -> Tensor<B, 2>| {
        let x = input();
        let out = f(x.clone());
        let values = to_vec(out.clone().inner());
        let k = values.len();
        let weights = Tensor::<B, 1>::from_floats(
            (0..k)
                .map(|j| 1.0 + (j % 5) as f32 * 0.25)
                .collect::<Vec<_>>()
                .as_slice(),
            device,
        )
        .reshape(out.dims());
        let grads = (out * weights).sum().backward();
        let g = to_vec(x.grad(&grads).expect("input gradient"));
        (name, values, g)
    };
    let mut out = vec![run("DiceLoss", &|x| dice_forward(case, x, data, device))];
    let target = || target_tensor::<B, D>(case, data, device);
    let c = case.classes;
    let dice = case.dice_config();
    let act = case.activation();
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
            .init::<B>(device)
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
            .init::<B>(device)
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
                .init::<B>(device)
                .forward_no_reduction(x, target())
        }));
        out.push(run("DiceFocalLoss", &|x| {
            DiceFocalLossConfig::new()
                .with_dice(plain.clone())
                .with_alpha(case.weights.then_some(0.25))
                .init::<B>(device)
                .forward_no_reduction(x, target())
        }));
    }
    out
}

/// The metric's counts against a plain loop, on argmax predictions (2+ classes).
fn metric_matches_counting<B: Backend, const D: usize>(
    case: &Case,
    data: &Data,
    device: &B::Device,
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
        Tensor::<B, D, Int>::from_data(TensorData::new(v.clone(), shape_of::<D>(case, 1)), device)
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

fn check_on<B: AutodiffBackend, const D: usize>(
    backend: &str,
    case: &Case,
    data: &Data,
    expected: &Expected,
    device: &B::Device,
) -> Result<Outcome, String> {
    let fail = |what: String| Err(format!("{backend}: {what}"));
    let fused = family::<B, D>(case, data, device);
    let generic = generic_only(|| family::<B, D>(case, data, device));
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
    metric_matches_counting::<B, D>(case, data, device).map_err(|e| format!("{backend}: {e}"))?;
    Ok(outcome)
}

/// The properties that relate cases to each other (batch splitting, class permutation), on the
/// f64 reference and the fused path of flex.
fn relations<B: Backend, const D: usize>(case: &Case, device: &B::Device) -> Result<(), String> {
    let data = case.data();
    let whole = &dice_values::<B, D>(case, &data, device);
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
            let alone = &dice_values::<B, D>(&one, &part, device);
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
        let got = &dice_values::<B, D>(case, &permuted, device);
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
        family: generic_only(|| {
            family::<Autodiff<burn_ndarray::NdArray<f64>>, D>(case, data, &Default::default())
        }),
        dice: reference(case, data),
    }
}

/// Checks every property of `case` on burn-flex and burn-ndarray.
pub fn check(case: &Case) -> Result<Outcome, String> {
    let case = case.clone().normalized();
    macro_rules! ranked {
        ($d:literal) => {{
            let data = case.data();
            let expected = expected::<$d>(&case, &data);
            let flex = check_on::<Autodiff<burn_flex::Flex>, $d>(
                "flex",
                &case,
                &data,
                &expected,
                &Default::default(),
            )?;
            let nd = check_on::<Autodiff<burn_ndarray::NdArray<f32>>, $d>(
                "ndarray",
                &case,
                &data,
                &expected,
                &Default::default(),
            )?;
            relations::<burn_flex::Flex, $d>(&case, &Default::default())?;
            Ok(flex.merge(nd))
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
            type B = Autodiff<burn_flex::Flex>;
            let device = Default::default();
            for generic in [false, true] {
                let family = if generic {
                    generic_only(|| family::<B, $d>(&case, &data, &device))
                } else {
                    family::<B, $d>(&case, &data, &device)
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

/// Checks `case` on burn-wgpu (the CubeCL kernels against the generic path on wgpu, both
/// against the generic path in f64, and the f64 loop of the formula; the metric).
#[cfg(feature = "wgpu")]
pub fn check_wgpu(case: &Case) -> Result<Outcome, String> {
    let case = case.clone().normalized();
    let device = crate::wgpu_device().ok_or("no wgpu adapter (see above)")?;
    macro_rules! ranked {
        ($d:literal) => {{
            let data = case.data();
            let expected = expected::<$d>(&case, &data);
            check_on::<Autodiff<burn_wgpu::Wgpu>, $d>("wgpu", &case, &data, &expected, &device)
        }};
    }
    match case.spatial.len() {
        1 => ranked!(3),
        2 => ranked!(4),
        3 => ranked!(5),
        k => Err(format!("{k} spatial dims: expected 1 to 3")),
    }
}

/// A random case from `seed` (the soak binary's generator; the property tests use proptest's
/// strategies over the same fields).
pub fn random_case(seed: u64) -> Case {
    let u = uniform(24, seed);
    let pick = |k: usize, n: usize| ((u[k] * n as f64) as usize).min(n - 1);
    let rank = 1 + pick(0, 3);
    let max_side = [300, 40, 12][rank - 1];
    let spatial = (0..rank).map(|k| 1 + pick(1 + k, max_side)).collect();
    Case {
        batch: 1 + pick(4, 3),
        classes: 1 + pick(5, 8),
        spatial,
        target: [TargetKind::Indices, TargetKind::OneHot, TargetKind::Soft][pick(6, 3)],
        activation: pick(7, 3) as u8,
        squared_pred: u[8] < 0.5,
        jaccard: u[9] < 0.3,
        batch_sums: u[10] < 0.3,
        include_background: u[11] < 0.5,
        ignore: u[12] < 0.4,
        mask: u[13] < 0.3,
        weights: u[14] < 0.3,
        log_loss: u[15] < 0.2,
        extreme: u[16] < 0.2,
        empty_class: u[17] < 0.3,
        large: u[18] < 0.02,
        soft_label: u[19] < 0.3,
        seed: seed ^ 0xDA7A,
    }
    .normalized()
}
