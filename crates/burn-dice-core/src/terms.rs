//! The per-pixel terms of the three statistics `I`, `P`, `T`, shared by every implementation
//! of both release lines (the generic burn-ops paths, the CPU kernels here, the CubeCL kernels).

/// Which per-pixel terms the three statistics sum: MONAI 1.6's `compute_tp_fp_fn` with its
/// `ord` (2 with `squared_pred`) and `soft_label`. With `p`, `t` the probability and target of
/// one pixel (both times its 0/1 weight):
///
/// | terms | `I` | `P` | `T` | options |
/// |---|---|---|---|---|
/// | [`Terms::Linear`] | `Σ p·t` | `Σ p` | `Σ t` | neither |
/// | [`Terms::Squared`] | `Σ p·t` | `Σ p²` | `Σ t²` | `squared_pred`, with or without `soft_label` |
/// | [`Terms::SoftL1`] | `Σ (|p| + |t| − |p − t|) / 2` | `Σ |p|` | `Σ |t|` | `soft_label` |
///
/// MONAI computes `I = (‖p‖ + ‖t‖ − ‖p − t‖) / 2` from the norms over the whole class, which
/// cancels: in f32, `(1e-20 + 1 − |1e-20 − 1|) / 2` is 0, not `min = 1e-20` (a saturated
/// softmax against a hard target). Every path here sums the pixels' terms in the exact form
/// of [`Terms::soft_intersection`]. With the squared L2 norm that `I` is `Σ p·t` exactly, so `soft_label` changes nothing under `squared_pred`;
/// with targets in `{0, 1}` and `p ∈ [0, 1]`, `(|p| + |t| − |p − t|) / 2 = min(p, t) = p·t`,
/// so it changes nothing on hard labels either (but for the subgradient where `p = t` exactly,
/// see [`Terms::d_soft`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terms {
    /// `I = Σ p·t`, `P = Σ p`, `T = Σ t`.
    Linear,
    /// `I = Σ p·t`, `P = Σ p²`, `T = Σ t²`.
    Squared,
    /// `I = Σ (|p| + |t| − |p − t|) / 2`, `P = Σ |p|`, `T = Σ |t|`.
    SoftL1,
}

impl Terms {
    /// The terms of a loss's options.
    pub fn new(squared_pred: bool, soft_label: bool) -> Self {
        match (squared_pred, soft_label) {
            (true, _) => Terms::Squared,
            (false, true) => Terms::SoftL1,
            (false, false) => Terms::Linear,
        }
    }

    /// One pixel's [`Terms::SoftL1`] intersection `(|p| + |t| − |p − t|) / 2`, written as
    /// `p·m_p + t·m_t` with its subgradients `m_p = (sgn p − sgn(p − t))/2` and
    /// `m_t = (sgn t + sgn(p − t))/2` (the term is homogeneous of degree 1, so Euler's identity
    /// holds). Each `m` is one of 0, ±1/2, ±1, so the products are exact and the result is the
    /// exact `min(p, t)` for `p, t ≥ 0` (one rounding at `p = t`, none elsewhere).
    #[inline(always)]
    pub fn soft_intersection(p: f32, t: f32) -> f32 {
        let s = sgn(p - t);
        p * ((sgn(p) - s) * 0.5) + t * ((sgn(t) + s) * 0.5)
    }

    /// The subgradients of the [`Terms::SoftL1`] terms of one pixel with respect to `p`:
    /// `(∂I/∂p, ∂P/∂p) = ((sgn p − sgn(p − t)) / 2, sgn p)`, with `sgn 0 = 0` as PyTorch's
    /// `sgn` and burn's `sign` (the gradient of `torch.linalg.vector_norm(·, 1)` and of burn's
    /// `abs`). Where `p = t` exactly (a hard target met exactly, as a saturated softmax can)
    /// `∂I/∂p` is `sgn(p) / 2`: half of the `t` the hard formula gives.
    #[inline(always)]
    pub fn d_soft(p: f32, t: f32) -> (f32, f32) {
        let (sp, sd) = (sgn(p), sgn(p - t));
        ((sp - sd) * 0.5, sp)
    }
}

/// `sgn v` with `sgn 0 = 0` (and `sgn NaN = 0`), branch-free.
// The CPU kernels' (the CubeCL kernels of each line have their own).
#[inline(always)]
fn sgn(v: f32) -> f32 {
    f32::from(u8::from(v > 0.0)) - f32::from(u8::from(v < 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_intersection_is_the_exact_min_and_its_subgradients_pytorchs() {
        // Where `(|p| + |t| − |p − t|)/2` cancels to 0 in f32.
        assert_eq!(Terms::soft_intersection(1e-20, 1.0), 1e-20);
        assert_eq!(Terms::soft_intersection(1.0, 1e-20), 1e-20);
        for (p, t) in [
            (0.3f32, 0.7f32),
            (0.7, 0.3),
            (0.5, 0.5),
            (0.0, 0.4),
            (0.2, 0.0),
        ] {
            assert_eq!(Terms::soft_intersection(p, t), p.min(t), "{p}, {t}");
        }
        // Opposite signs (possible without an activation): (|p| + |t| − |p − t|)/2 = 0.
        assert_eq!(Terms::soft_intersection(-0.3, 0.5), 0.0);
        // ∂I/∂p: 1 below the target, 0 above, 1/2 at it (sgn 0 = 0); ∂P/∂p = sgn p.
        assert_eq!(Terms::d_soft(0.2, 0.6), (1.0, 1.0));
        assert_eq!(Terms::d_soft(0.8, 0.6), (0.0, 1.0));
        assert_eq!(Terms::d_soft(0.6, 0.6), (0.5, 1.0));
        assert_eq!(Terms::d_soft(0.0, 0.0), (0.0, 0.0));
        assert_eq!(Terms::d_soft(-0.2, 0.5), (0.0, -1.0));
        assert_eq!(sgn(f32::NAN), 0.0);
    }

    #[test]
    fn terms_of_the_options() {
        assert_eq!(Terms::new(false, false), Terms::Linear);
        assert_eq!(Terms::new(true, false), Terms::Squared);
        assert_eq!(Terms::new(true, true), Terms::Squared);
        assert_eq!(Terms::new(false, true), Terms::SoftL1);
    }
}
