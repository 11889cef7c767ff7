//! The random cases of the property tests and their f64 reference, without burn: a [`Case`]
//! (shape, target kind, options, seeds), its data ([`Case::data`]), the activation and the
//! `DiceLoss` formula as plain f64 loops ([`probabilities`], [`reference()`]), the comparisons and
//! their tolerances. Each release line's property tests build tensors from the same data, run
//! its losses, and compare with these.

use super::XorShift;

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
pub fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut r = XorShift::new(seed);
    (0..n).map(|_| r.unit()).collect()
}

/// The case's data, flat, in f64: input `[b, c, n]`, dense target `[b, c, n]` (the one-hot of
/// the labels for index targets, 0 at ignored pixels), labels `[b, n]`, mask `[b, n]`.
pub struct Data {
    /// The input `[b, c, n]`.
    pub input: Vec<f64>,
    /// The dense target `[b, c, n]`.
    pub target: Vec<f64>,
    /// The class indices `[b, n]` (`ignore_index` where ignored).
    pub labels: Vec<i64>,
    /// The 0/1 mask `[b, n]` (all ones without `mask`).
    pub mask: Vec<f64>,
}

impl Case {
    /// Pixels per class of a sample.
    pub fn pixels(&self) -> usize {
        self.spatial.iter().product()
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

    /// The `ignore_index` of the case (the label `max(classes, 2)`), if it ignores one.
    pub fn ignore_index(&self) -> Option<usize> {
        self.ignore.then_some(self.classes.max(2))
    }

    /// The case's data, from its seed.
    pub fn data(&self) -> Data {
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

    /// `DiceLoss`'s `(smooth_nr, smooth_dr)` for every case: its defaults (MONAI's), which the
    /// burn side sets explicitly so that both agree by construction.
    pub fn smooth(&self) -> (f64, f64) {
        (1e-5, 1e-5)
    }

    /// The class weights of a case with `weights`: `0.25 + 0.5·(k mod 3)` for the `k`-th kept
    /// class.
    pub fn class_weights(&self) -> Option<Vec<f32>> {
        let kept = if self.include_background || self.classes == 1 {
            self.classes
        } else {
            self.classes - 1
        };
        self.weights
            .then(|| (0..kept).map(|k| 0.25 + 0.5 * (k % 3) as f32).collect())
    }
}

/// The activation of `input` (`[b, c, n]`) in f64.
pub fn probabilities(case: &Case, input: &[f64]) -> Vec<f64> {
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
pub fn reference(case: &Case, data: &Data) -> Vec<f64> {
    let (b, c, n) = (case.batch, case.classes, case.pixels());
    let p = probabilities(case, &data.input);
    let first = usize::from(!case.include_background && c > 1);
    let rows = if case.batch_sums { 1 } else { b };
    let mut out = Vec::new();
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
            let (snr, sdr) = case.smooth();
            let f = if case.jaccard {
                (2.0 * i + snr) / (2.0 * (ps + ts - i) + sdr)
            } else {
                (2.0 * i + snr) / (ps + ts + sdr)
            };
            // As documented (and in MONAI): no weight when one class is kept.
            let w = match &case.class_weights() {
                Some(w) if c - first > 1 => f64::from(w[ci - first]),
                _ => 1.0,
            };
            out.push(w * if case.log_loss { -f.ln() } else { 1.0 - f });
        }
    }
    out
}

/// `max |a − b| / max(|a|, |b|, 1)` over the entries (values near 0 compared absolutely).
pub fn value_err(a: &[f64], b: &[f64]) -> f64 {
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
pub fn worst_entry(a: &[f64], b: &[f64]) -> String {
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
pub fn grad_err_floor(a: &[f64], b: &[f64], floor: f64) -> f64 {
    let scale = a.iter().chain(b).fold(floor, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn case(seed: u64) -> Case {
        Case {
            activation: 0,
            target: TargetKind::OneHot,
            soft_label: false,
            ignore: false,
            mask: false,
            weights: false,
            log_loss: false,
            jaccard: false,
            squared_pred: false,
            batch_sums: false,
            include_background: true,
            large: false,
            extreme: false,
            empty_class: false,
            ..random_case(seed)
        }
        .normalized()
    }

    #[test]
    fn the_reference_is_zero_at_the_target_and_one_against_its_complement() {
        for seed in 0..20 {
            let c = case(seed);
            let mut data = c.data();
            data.input = data.target.clone();
            let at_target = reference(&c, &data);
            assert!(
                at_target.iter().all(|v| v.abs() < 1e-9),
                "{c:?}: {at_target:?}"
            );
            data.input = data.target.iter().map(|t| 1.0 - t).collect();
            for (k, v) in reference(&c, &data).into_iter().enumerate() {
                // A class with no pixel in the target scores 1 − smooth/(P + smooth) there.
                assert!(v > 0.99 || c.classes == 1, "{c:?}: entry {k} = {v}");
            }
        }
    }

    #[test]
    fn the_activations_are_probabilities() {
        for seed in 0..20 {
            let c = Case {
                activation: 2,
                ..case(seed)
            }
            .normalized();
            if c.activation != 2 {
                // One channel: `normalized` turned the softmax into a sigmoid.
                assert_eq!((c.classes, c.activation), (1, 1));
                continue;
            }
            let data = c.data();
            let p = probabilities(&c, &data.input);
            let (b, k, n) = (c.batch, c.classes, c.pixels());
            for bi in 0..b {
                for px in 0..n {
                    let sum: f64 = (0..k).map(|ci| p[(bi * k + ci) * n + px]).sum();
                    assert!((sum - 1.0).abs() < 1e-12, "{c:?}: {sum}");
                }
            }
        }
    }

    #[test]
    fn normalized_cases_are_consistent() {
        for seed in 0..500 {
            let c = random_case(seed);
            assert!(c.classes > 1 || c.activation != 2, "{c:?}");
            assert!(c.target == TargetKind::Indices || !c.ignore, "{c:?}");
            let data = c.data();
            let (b, k, n) = (c.batch, c.classes, c.pixels());
            assert_eq!(data.input.len(), b * k * n);
            assert_eq!((data.labels.len(), data.mask.len()), (b * n, b * n));
            assert_eq!(c.class_weights().is_some(), c.weights);
        }
    }
}
