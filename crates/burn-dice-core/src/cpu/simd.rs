//! The vector math every CPU kernel uses, written once against macerator's `Vector<S, f32>`
//! and compiled for each instruction set by `isa.rs` (AVX-512, AVX2 + FMA, SSE4.2, NEON, or one
//! scalar lane): loads and stores that pad a block's tail, `e^x`, `ln x`, the logistic sigmoid
//! and `ln(1 + e^−|x|)`, and the soft-label terms' sign.
//!
//! Explicit vectors, not the compiler's auto-vectorisation: the same loops auto-vectorised well
//! under AVX-512 and hardly at all under AVX2 (issue #37: DiceFocal 8× slower there), because
//! the float ↔ integer steps of `exp`/`ln` and the per-lane selects have no direct AVX2 form the
//! vectoriser found. Here every step is one vector operation on every level.

use macerator::{vload_unaligned, vstore_unaligned, Mask, Scalar, Simd, Vector};

/// `L` lanes of `f32` (L: 16 on AVX-512, 8 on AVX2, 4 on SSE and NEON, 1 on the scalar level).
pub(super) type V<S> = Vector<S, f32>;

/// The most lanes any level has (AVX-512's 16 `f32`).
const MAX_LANES: usize = 16;

/// The lane count of `S`.
#[inline(always)]
pub(super) fn lanes<S: Simd>() -> usize {
    <f32 as Scalar>::lanes::<S>()
}

/// `v` in every lane.
#[inline(always)]
pub(super) fn splat<S: Simd>(v: f32) -> V<S> {
    v.splat::<S>()
}

/// The lane count of `S`, checked against [`MAX_LANES`], the size of the tail buffers of
/// [`load`] and [`store_at`] (a constant per `S`: the check folds away).
#[inline(always)]
fn checked_lanes<S: Simd>() -> usize {
    let l = lanes::<S>();
    assert!(
        l <= MAX_LANES,
        "{l} lanes: the tail buffers hold {MAX_LANES}"
    );
    l
}

/// Lanes `k..k + L` of `s`, with zeros past its end (the tail of a partial block). `k < s.len()`.
#[inline(always)]
#[allow(unsafe_code)]
pub(super) fn load<S: Simd>(s: &[f32], k: usize) -> V<S> {
    let l = checked_lanes::<S>();
    if k + l <= s.len() {
        // SAFETY: lanes `k..k + l` are inside `s`.
        unsafe { vload_unaligned(s.as_ptr().add(k)) }
    } else {
        let mut buf = [0.0f32; MAX_LANES];
        buf[..s.len() - k].copy_from_slice(&s[k..]);
        // SAFETY: `buf` holds `MAX_LANES >= l` values (`checked_lanes`).
        unsafe { vload_unaligned(buf.as_ptr()) }
    }
}

/// Stores the first `min(L, len − k)` lanes of `v` at `dst + k`, for `dst` valid for writes of
/// `len` `f32` (initialised or not) and `k <= len`: the one store of [`store`] and
/// [`store_uninit`].
///
/// # Safety
/// `dst` must be valid for writes of `len` `f32` values.
#[inline(always)]
#[allow(unsafe_code)]
unsafe fn store_at<S: Simd>(dst: *mut f32, len: usize, k: usize, v: V<S>) {
    let l = checked_lanes::<S>();
    assert!(k <= len, "store at {k} of {len}");
    if k + l <= len {
        // SAFETY: lanes `k..k + l` are inside the `len` values the caller vouches for.
        unsafe { vstore_unaligned(dst.add(k), v) }
    } else {
        let mut buf = [0.0f32; MAX_LANES];
        // SAFETY: `buf` holds `MAX_LANES >= l` values (`checked_lanes`).
        unsafe { vstore_unaligned(buf.as_mut_ptr(), v) };
        // SAFETY: `k..len` is inside the caller's `len` values and disjoint from `buf`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst.add(k), len - k) }
    }
}

/// Stores the first `min(L, s.len() − k)` lanes of `v` at `s[k..]`. `k < s.len()`.
#[inline(always)]
#[allow(unsafe_code)]
pub(super) fn store<S: Simd>(s: &mut [f32], k: usize, v: V<S>) {
    // SAFETY: `s` is valid for writes of `s.len()` values.
    unsafe { store_at(s.as_mut_ptr(), s.len(), k, v) }
}

/// [`store`] into memory not yet initialised (the forward pass's stored probabilities).
#[inline(always)]
#[allow(unsafe_code)]
pub(super) fn store_uninit<S: Simd>(s: &mut [std::mem::MaybeUninit<f32>], k: usize, v: V<S>) {
    // SAFETY: `s` is valid for writes of `s.len()` values; `MaybeUninit<f32>` has `f32`'s
    // layout, and only initialised values are written.
    unsafe { store_at(s.as_mut_ptr().cast::<f32>(), s.len(), k, v) }
}

/// The sum of the lanes of `v`, in `f64` (a block's partial sum into the job's total).
#[inline(always)]
pub(super) fn sum_f64<S: Simd>(v: V<S>) -> f64 {
    v.reduce_add() as f64
}

/// `−v`, exactly (the sign bit flipped; `Vector` has no `Neg`).
#[inline(always)]
pub(super) fn neg<S: Simd>(v: V<S>) -> V<S> {
    (v.reinterpret::<u32>() ^ 0x8000_0000u32.splat::<S>()).reinterpret::<f32>()
}

/// `1` where `m` is set, else `0`.
#[inline(always)]
pub(super) fn ones<S: Simd>(m: Mask<S, f32>) -> V<S> {
    m.select(splat::<S>(1.0), splat::<S>(0.0))
}

/// `e^x`, branch-free: Cody-Waite range reduction `x = k·ln 2 + r` and Cephes' degree-6
/// polynomial for `e^r` (about 1 ulp on the whole range). Inputs are clamped to
/// `[−87.3, 88.3]`, so `e^x` never overflows and underflows to about 1e-38 instead of 0.
#[inline(always)]
pub(super) fn exp<S: Simd>(x: V<S>) -> V<S> {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to nearest through the float mantissa: `k` lands in its low bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.max(splat(-87.3)).min(splat(88.3));
    let shifted = x.mul_add(splat(LOG2E), splat(MAGIC));
    let k = shifted - splat(MAGIC);
    let k_bits = shifted.reinterpret::<u32>() - MAGIC.to_bits().splat::<S>();
    let r = k.mul_add(splat(-LN2_LO), k.mul_add(splat(-LN2_HI), x));
    let r2 = r * r;
    let p = splat::<S>(1.987_569_1e-4);
    let p = p.mul_add(r, splat(1.398_199_9e-3));
    let p = p.mul_add(r, splat(8.333_452e-3));
    let p = p.mul_add(r, splat(4.166_579_6e-2));
    let p = p.mul_add(r, splat(1.666_666_5e-1));
    let p = p.mul_add(r, splat(0.5));
    let e = p.mul_add(r2, r + splat(1.0));
    let scale = ((k_bits + 127u32.splat::<S>()) << 23).reinterpret::<f32>();
    e * scale
}

/// `ln x` for finite `x > 0` (normal), branch-free: `x = m·2^e` with `m` in `[√½, √2)` and
/// Cephes' polynomial for `ln m` (about 1 ulp).
#[inline(always)]
pub(super) fn ln<S: Simd>(x: V<S>) -> V<S> {
    let bits = x.reinterpret::<u32>();
    let m =
        ((bits & 0x007f_ffffu32.splat::<S>()) | 0x3f80_0000u32.splat::<S>()).reinterpret::<f32>();
    let sqrt2 = splat::<S>(std::f32::consts::SQRT_2);
    let e = (bits >> 23).reinterpret::<i32>().to_float() - splat(127.0) + ones(m.gt(sqrt2));
    let m = m.gt(sqrt2).select(m * splat(0.5), m);
    let f = m - splat(1.0);
    let z = f * f;
    let y = splat::<S>(7.037_683_6e-2);
    let y = y.mul_add(f, splat(-1.151_461e-1));
    let y = y.mul_add(f, splat(1.167_699_9e-1));
    let y = y.mul_add(f, splat(-1.242_014_1e-1));
    let y = y.mul_add(f, splat(1.424_932_3e-1));
    let y = y.mul_add(f, splat(-1.666_805_8e-1));
    let y = y.mul_add(f, splat(2.000_071_4e-1));
    let y = y.mul_add(f, splat(-2.499_999_4e-1));
    let y = y.mul_add(f, splat(3.333_333e-1));
    let y = y * f * z;
    let y = e.mul_add(splat(-2.121_944_4e-4), y);
    let y = z.mul_add(splat(-0.5), y);
    e.mul_add(splat(0.693_359_4), f + y)
}

/// The logistic sigmoid `1 / (1 + e^−x)` (the activation).
#[inline(always)]
pub(super) fn sigmoid<S: Simd>(x: V<S>) -> V<S> {
    splat::<S>(1.0) / (splat::<S>(1.0) + exp(neg(x)))
}

/// What the sigmoid-based terms (binary cross-entropy, focal) need of a logit `x`, with one
/// `exp` and one `ln`: `σ(x)`, `σ(−x)` and `l = ln(1 + e^−|x|)`, so that
/// `ln σ(x) = min(x, 0) − l` and `ln σ(−x) = min(−x, 0) − l` (stable for any finite `x`).
#[derive(Clone, Copy)]
pub(super) struct Logistic<S: Simd> {
    /// `σ(x)`.
    pub p: V<S>,
    /// `σ(−x) = 1 − σ(x)`.
    pub q: V<S>,
    /// `ln(1 + e^−|x|)`.
    pub l: V<S>,
}

impl<S: Simd> Logistic<S> {
    /// From the logit alone.
    #[inline(always)]
    pub fn of(x: V<S>) -> Self {
        let e = exp(neg(x.abs()));
        let d = splat::<S>(1.0) + e;
        let r = splat::<S>(1.0) / d;
        // Masks are not `Copy`: one comparison each (the compiler merges them).
        let pos = || x.ge(splat(0.0));
        Logistic {
            p: pos().select(r, e * r),
            q: pos().select(e * r, r),
            l: ln(d),
        }
    }

    /// From `p = σ(x)` that the statistics' sigmoid already computed: no `exp`, and
    /// `ln(1 + e^−|x|) = −ln max(p, 1 − p)`. Where `|x| > 16`, `p` or `1 − p` rounds to 1 in
    /// `f32` and `l` to 0 (the exact value is below 1.2e-7 there).
    #[inline(always)]
    pub fn of_sigmoid(p: V<S>) -> Self {
        let q = splat::<S>(1.0) - p;
        Logistic {
            p,
            q,
            l: neg(ln(p.max(q))),
        }
    }

    /// `ln σ(x)`.
    #[inline(always)]
    pub fn ln_p(&self, x: V<S>) -> V<S> {
        x.min(splat(0.0)) - self.l
    }

    /// `ln σ(−x)`.
    #[inline(always)]
    pub fn ln_q(&self, x: V<S>) -> V<S> {
        neg(x).min(splat(0.0)) - self.l
    }
}

/// `sgn v` with `sgn 0 = 0` (and `sgn NaN = 0`), as [`crate::Terms::d_soft`]'s.
#[inline(always)]
pub(super) fn sgn<S: Simd>(v: V<S>) -> V<S> {
    ones(v.gt(splat(0.0))) - ones(v.lt(splat(0.0)))
}

/// [`crate::Terms::soft_intersection`] lane by lane: `p·m_p + t·m_t`.
#[inline(always)]
pub(super) fn soft_intersection<S: Simd>(p: V<S>, t: V<S>) -> V<S> {
    let s = sgn(p - t);
    let half = splat::<S>(0.5);
    p * ((sgn(p) - s) * half) + t * ((sgn(t) + s) * half)
}

/// [`crate::Terms::d_soft`] lane by lane: `(∂I/∂p, ∂P/∂p)`.
#[inline(always)]
pub(super) fn d_soft<S: Simd>(p: V<S>, t: V<S>) -> (V<S>, V<S>) {
    let (sp, sd) = (sgn(p), sgn(p - t));
    ((sp - sd) * splat(0.5), sp)
}

#[cfg(test)]
mod tests {
    use super::super::isa::{dispatch, Isa};
    use super::*;
    use macerator::WithSimd;

    /// The unary vector functions under test.
    #[derive(Clone, Copy)]
    enum Op {
        Exp,
        Ln,
        Sigmoid,
        /// `ln σ(x)` through [`Logistic::of`].
        LnSigmoid,
        /// `ln σ(x)` through [`Logistic::of_sigmoid`].
        LnSigmoidShared,
    }

    struct Apply<'a>(Op, &'a [f32]);

    impl WithSimd for Apply<'_> {
        type Output = Vec<f32>;
        fn with_simd<S: Simd>(self) -> Vec<f32> {
            let Apply(op, xs) = self;
            let mut out = vec![0.0; xs.len()];
            for k in (0..xs.len()).step_by(lanes::<S>()) {
                let x = load::<S>(xs, k);
                let y = match op {
                    Op::Exp => exp(x),
                    Op::Ln => ln(x),
                    Op::Sigmoid => sigmoid(x),
                    Op::LnSigmoid => Logistic::of(x).ln_p(x),
                    Op::LnSigmoidShared => Logistic::of_sigmoid(sigmoid(x)).ln_p(x),
                };
                store(&mut out, k, y);
            }
            out
        }
    }

    fn apply(isa: Isa, op: Op, xs: &[f32]) -> Vec<f32> {
        dispatch(isa, Apply(op, xs))
    }

    #[test]
    fn exp_is_within_two_ulp_of_std_at_every_level() {
        // 12,775 values (not a multiple of any lane count: the tail path too).
        let xs: Vec<f32> = (0..12_775).map(|i| -87.0 + i as f32 * 0.0137).collect();
        for isa in Isa::available() {
            let ours = apply(isa, Op::Exp, &xs);
            let worst = xs
                .iter()
                .zip(&ours)
                .map(|(x, o)| ((o - x.exp()) / x.exp()).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 2.5e-7, "{isa:?}: worst relative error {worst}");
            let edges = apply(isa, Op::Exp, &[0.0, -1000.0, 1000.0]);
            assert_eq!(edges[0], 1.0, "{isa:?}");
            assert!(edges[1] < 1e-37 && edges[1] >= 0.0, "{isa:?}");
            assert!(edges[2].is_finite(), "{isa:?}");
        }
    }

    #[test]
    fn ln_is_within_two_ulp_of_std_at_every_level() {
        let mut xs = vec![];
        let mut x = 1e-6f32;
        while x < 1e6 {
            xs.push(x);
            x *= 1.0137;
        }
        for isa in Isa::available() {
            let ours = apply(isa, Op::Ln, &xs);
            let worst = xs
                .iter()
                .zip(&ours)
                .map(|(x, o)| (o - x.ln()).abs() / x.ln().abs().max(f32::EPSILON))
                .fold(0.0f32, f32::max);
            assert!(worst < 2.5e-7, "{isa:?}: worst relative error {worst}");
            assert_eq!(apply(isa, Op::Ln, &[1.0])[0], 0.0, "{isa:?}");
        }
    }

    #[test]
    fn sigmoid_and_its_log_at_every_level() {
        let xs: Vec<f32> = (0..4001).map(|i| -40.0 + i as f32 * 0.02).collect();
        for isa in Isa::available() {
            let s = apply(isa, Op::Sigmoid, &xs);
            let ls = apply(isa, Op::LnSigmoid, &xs);
            let shared = apply(isa, Op::LnSigmoidShared, &xs);
            for (k, &x) in xs.iter().enumerate() {
                let x64 = x as f64;
                let sig = 1.0 / (1.0 + (-x64).exp());
                let log_sig = -(1.0 + (-x64).exp()).ln();
                assert!(
                    (s[k] as f64 - sig).abs() <= 2e-7 * sig + 1e-30,
                    "{isa:?} σ({x})"
                );
                // `1 + e^−|x|` rounds to f32 before its `ln`: 6e-8 absolute at most.
                assert!(
                    (ls[k] as f64 - log_sig).abs() <= 1e-6 * log_sig.abs() + 1.2e-7,
                    "{isa:?} ln σ({x}): {} vs {log_sig}",
                    ls[k]
                );
                // From the shared sigmoid: within 1.2e-7 absolute (see `of_sigmoid`).
                assert!(
                    (shared[k] as f64 - log_sig).abs() <= 1e-6 * log_sig.abs() + 1.3e-7,
                    "{isa:?} ln σ({x}) from σ: {} vs {log_sig}",
                    shared[k]
                );
            }
        }
    }

    #[test]
    fn the_levels_share_the_math() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let reference = apply(Isa::Scalar, Op::LnSigmoid, &xs);
        for isa in Isa::available() {
            let ours = apply(isa, Op::LnSigmoid, &xs);
            for (a, b) in ours.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= 2e-6 * b.abs().max(1.0),
                    "{isa:?}: {a} vs {b}"
                );
            }
        }
    }
}
