//! The fused per-(sample, class) statistics: one pass forward, one pass backward, from the
//! probabilities the forward pass stored or with the activation recomputed.
//!
//! Each job (`jobs.rs`) walks its pixels in blocks, computes the probabilities of all classes of
//! a block into a scratch buffer and accumulates the three sums of each class in vectors (one
//! register each, `simd.rs`), added into `f64` after each block. Generic over the term summed
//! beside the statistics ([`PixelTerm`], `term.rs`): `pass.rs` names the concrete ones.

use std::mem::MaybeUninit;

use macerator::Simd;

use super::common::{activate, block_bad, load_aux, Problem, Target, BLOCK};
use super::isa::{dispatch, kernel_job, Isa};
use super::jobs::{blocks, job_rows, jobs, run_jobs, Job};
use super::simd::{d_soft, lanes, load, soft_intersection, splat, store, store_uninit, sum_f64, V};
use super::term::{BlockData, PixelTerm};
use crate::Activation;
use crate::Terms;

/// Branch-free [`Terms::Squared`] or [`Terms::Linear`]: `x·(sq·x + lin)` is `x²` for `(1, 0)`
/// and `x` for `(0, 1)`, both exact.
#[inline(always)]
fn squared_factors<S: Simd>(problem: &Problem) -> (V<S>, V<S>) {
    if problem.terms == Terms::Squared {
        (splat(1.0), splat(0.0))
    } else {
        (splat(0.0), splat(1.0))
    }
}

/// Scratch space of one job.
struct Scratch {
    /// `[class][BLOCK]` probabilities of the block.
    probs: Vec<f32>,
    /// `[class][BLOCK]` backward: `∂L/∂p`.
    dp: Vec<f32>,
    /// Softmax: per pixel `max` and `Σ e`.
    max: [f32; BLOCK],
    sum: [f32; BLOCK],
    w: [f32; BLOCK],
    labels: [f32; BLOCK],
}

impl Scratch {
    fn new(classes: usize) -> Self {
        Scratch {
            probs: vec![0.0; classes * BLOCK],
            dp: vec![0.0; classes * BLOCK],
            max: [0.0; BLOCK],
            sum: [0.0; BLOCK],
            w: [0.0; BLOCK],
            labels: [0.0; BLOCK],
        }
    }

    /// What the term reads of a block `len` pixels long; `forward`: `max` and `sum` hold the
    /// block's softmax (the backward pass does not compute them).
    fn data(&self, activation: Activation, len: usize, forward: bool) -> BlockData<'_> {
        let softmax = forward && activation == Activation::Softmax;
        BlockData {
            activation,
            probs: &self.probs,
            softmax: softmax.then_some((&self.max, &self.sum)),
            w: &self.w[..len],
            labels: &self.labels[..len],
        }
    }
}

/// One block of [`forward_job`]: pixels `n0..n0 + len` of sample `b`, `local` pixels into the
/// job; adds the sums of every class to `wide` (`[class][3]`) and says whether [`block_bad`]
/// found anything. Called with `len = BLOCK` for full blocks, so that those loops have a
/// constant length.
#[inline(always)]
fn forward_block<S: Simd>(
    problem: &Problem,
    (b, n0, len): Job,
    local: usize,
    out: &mut [&mut [MaybeUninit<f32>]],
    s: &mut Scratch,
    wide: &mut [f64],
) -> bool {
    activate::<S>(problem, (b, n0, len), &mut s.probs, &mut s.max, &mut s.sum);
    load_aux(problem, (b, n0, len), &mut s.w, &mut s.labels);
    let bad = block_bad::<S>(problem, (b, n0, len), &s.labels);
    for (c, row) in out.iter_mut().enumerate() {
        let (row, p) = (
            &mut row[local..local + len],
            &s.probs[c * BLOCK..c * BLOCK + len],
        );
        for k in (0..len).step_by(lanes::<S>()) {
            store_uninit(row, k, load::<S>(p, k));
        }
    }
    // One copy of the class loop per kind of terms, so that neither carries a branch.
    if problem.terms == Terms::SoftL1 {
        block_sums::<S, true>(problem, (b, n0, len), s, wide);
    } else {
        block_sums::<S, false>(problem, (b, n0, len), s, wide);
    }
    bad
}

/// The terms `[I, P, T]` of one vector of pixels (see [`Terms`]), from `pw = p·w` and
/// `tw = t·w`; `(sq, lin)`: see [`squared_factors`]. `SOFT`: [`Terms::SoftL1`].
#[inline(always)]
fn pixel_terms<S: Simd, const SOFT: bool>(
    pw: V<S>,
    tw: V<S>,
    (sq, lin): (V<S>, V<S>),
) -> [V<S>; 3] {
    if SOFT {
        [soft_intersection(pw, tw), pw.abs(), tw.abs()]
    } else {
        [pw * tw, pw * sq.mul_add(pw, lin), tw * sq.mul_add(tw, lin)]
    }
}

/// `(∂I/∂p, ∂P/∂p)` of one vector of pixels, from `p`, its weight `w` and `tw = t·w` (the
/// derivatives of [`pixel_terms`] through `pw = p·w`).
#[inline(always)]
fn pixel_grads<S: Simd, const SOFT: bool>(
    p: V<S>,
    w: V<S>,
    tw: V<S>,
    (sq, lin): (V<S>, V<S>),
) -> (V<S>, V<S>) {
    if SOFT {
        let (d_i, d_p) = d_soft(p * w, tw);
        (d_i * w, d_p * w)
    } else {
        (tw * w, w * (sq * splat(2.0) * p).mul_add(w, lin))
    }
}

/// Where the target of one class of a block comes from.
#[derive(Clone, Copy)]
enum TargetRow<'a> {
    /// The dense target's row of the class.
    Dense(&'a [f32]),
    /// The block's labels, and the class as `f32`.
    Labels(&'a [f32], f32),
}

impl<'a> TargetRow<'a> {
    /// The target row of class `c` of the block (`labels` as loaded by `load_aux`).
    #[inline(always)]
    fn of(problem: &Problem<'a>, (b, n0, len): Job, c: usize, labels: &'a [f32]) -> Self {
        match problem.target {
            Target::Dense(t) => {
                TargetRow::Dense(&t[(b * problem.classes + c) * problem.pixels + n0..][..len])
            }
            Target::Indices(_) => TargetRow::Labels(labels, c as f32),
        }
    }

    /// `t·w` (`w·[label = c]` for class indices) of the pixels at `k`.
    #[inline(always)]
    fn times<S: Simd>(self, k: usize, w: V<S>) -> V<S> {
        match self {
            TargetRow::Dense(t) => load::<S>(t, k) * w,
            TargetRow::Labels(l, class) => load::<S>(l, k).eq(splat(class)).select(w, splat(0.0)),
        }
    }
}

/// The sums of every class over one block of [`forward_block`], added to `wide` (`[class][3]`).
/// The lanes past a partial block's end load as zeros (weight 0) and add nothing.
#[inline(always)]
fn block_sums<S: Simd, const SOFT: bool>(
    problem: &Problem,
    block @ (_, _, len): Job,
    s: &Scratch,
    wide: &mut [f64],
) {
    let factors = squared_factors::<S>(problem);
    let (w, labels) = (&s.w[..len], &s.labels[..len]);
    for c in 0..problem.classes {
        let p = &s.probs[c * BLOCK..c * BLOCK + len];
        let target = TargetRow::of(problem, block, c, labels);
        let mut acc = [splat::<S>(0.0); 3];
        for k in (0..len).step_by(lanes::<S>()) {
            let wk = load::<S>(w, k);
            // (p·w)·(t·w), as the generic path multiplies both by the mask.
            let tw = target.times(k, wk);
            let terms = pixel_terms::<S, SOFT>(load::<S>(p, k) * wk, tw, factors);
            for (a, t) in acc.iter_mut().zip(terms) {
                *a += t;
            }
        }
        for (stat, a) in acc.into_iter().enumerate() {
            wide[3 * c + stat] += sum_f64(a);
        }
    }
}

/// Sums of one job, `[3 + E::ROWS][classes]` (intersection, prediction, target, then those of
/// `term`), and whether [`block_bad`] found anything. With `out` non-empty, the probabilities
/// are also written there (one run per class).
#[inline(always)]
fn forward_job<S: Simd, E: PixelTerm>(
    problem: &Problem,
    term: &E,
    (b, start, count): Job,
    out: &mut [&mut [MaybeUninit<f32>]],
) -> (Vec<f64>, bool) {
    let c_count = problem.classes;
    let mut term_scratch = term.scratch();
    let mut term_sums = vec![0.0f64; E::ROWS * c_count];
    let mut s = Scratch::new(c_count);
    let mut wide = vec![0.0f64; 3 * c_count];
    let mut bad = false;
    for (n0, len, local) in blocks(start, count) {
        bad |= if len == BLOCK {
            forward_block::<S>(problem, (b, n0, BLOCK), local, out, &mut s, &mut wide)
        } else {
            forward_block::<S>(problem, (b, n0, len), local, out, &mut s, &mut wide)
        };
        let data = s.data(problem.activation, len, true);
        term.forward_block::<S>(&mut term_scratch, (b, n0, len), &data, &mut term_sums);
    }
    // `wide` is [class][stat]; the sums are [stat][class].
    let mut out = vec![0.0f64; 3 * c_count];
    for (i, v) in wide.into_iter().enumerate() {
        out[(i % 3) * c_count + i / 3] = v;
    }
    out.extend(term_sums);
    (out, bad)
}

/// What the forward pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Sums {
    /// The three `[batch, class]` tables and the term's rows, stacked: `[3 + rows, batch,
    /// class]`.
    pub sums: Vec<f32>,
    /// Every input and dense target value is finite and every class index is in
    /// `0..classes` (the data checks of `check_inputs`).
    pub valid_data: bool,
}

/// The statistics of `problem` and the sums of `term`, compiled for `isa` (which the CPU must
/// support), and the probabilities (the input's size), for [`backward_on`] with `stored`.
#[allow(unsafe_code)]
pub(super) fn forward_storing_on<E: PixelTerm>(
    isa: Isa,
    problem: &Problem,
    term: &E,
) -> (Sums, Vec<f32>) {
    // Not zeroed: every element is written below, and zeroing is a serial pass as long as the
    // kernel itself on one core.
    let mut probs = Vec::with_capacity(problem.x.len());
    let sums = forward_on(isa, problem, term, Some(probs.spare_capacity_mut()));
    // SAFETY: `forward_on` wrote every element: the jobs cover every (sample, pixel), and each
    // writes its pixels of every class row (`job_rows`, `forward_block`), whatever the data.
    unsafe { probs.set_len(problem.x.len()) };
    (sums, probs)
}

/// The statistics of `problem` compiled for `isa` (which the CPU must support); with `probs`
/// (the input's size) the probabilities are written there too.
pub(super) fn forward_on<E: PixelTerm>(
    isa: Isa,
    problem: &Problem,
    term: &E,
    probs: Option<&mut [MaybeUninit<f32>]>,
) -> Sums {
    let (b_count, c_count) = (problem.batch, problem.classes);
    let rows_out = 3 + E::ROWS;
    let jobs = jobs(problem);
    let mut rows = match probs {
        Some(buf) => job_rows(problem, &jobs, buf),
        None => jobs.iter().map(|_| Vec::new()).collect(),
    };
    let partial = run_jobs(problem, &jobs, &mut rows, |job, out| {
        dispatch(
            isa,
            ForwardJob {
                problem,
                term,
                job,
                out,
            },
        )
    });
    let mut out = vec![0.0f64; rows_out * b_count * c_count];
    let mut bad = false;
    for (&(b, _, _), (sums, job_bad)) in jobs.iter().zip(&partial) {
        bad |= job_bad;
        for s in 0..rows_out {
            for c in 0..c_count {
                out[(s * b_count + b) * c_count + c] += sums[s * c_count + c];
            }
        }
    }
    Sums {
        sums: out.into_iter().map(|v| v as f32).collect(),
        valid_data: !bad,
    }
}

/// The gradient with respect to `x` of `Σ g_I·I + g_P·P + g_T·T` (and of the rows of `term`)
/// for `grad` = `[3 + rows, batch, class]` (`T` does not depend on `x`), the activation
/// recomputed from `x`.
///
/// With `pw = p·w` and `tw = t·w` (`w·[label = c]` for indices): `∂I/∂p = tw·w`, `∂P/∂p = w`
/// or `2·p·w²` ([`Terms::Squared`]); with [`Terms::SoftL1`], `∂I/∂p = w·(sgn pw − sgn(pw −
/// tw))/2` and `∂P/∂p = w·sgn pw` ([`Terms::d_soft`]); then through the activation: sigmoid
/// `p(1 − p)`, softmax `p_c (dp_c − Σ_k p_k dp_k)`.
///
/// Compiled for `isa` (which the CPU must support), into `out`. `stored`: `out` holds the
/// probabilities [`forward_storing_on`] stored, which the gradient overwrites in place (no
/// activation to recompute; `problem.x` is read only by a term).
pub(super) fn backward_on<E: PixelTerm>(
    isa: Isa,
    problem: &Problem,
    term: &E,
    grad: &[f32],
    out: &mut [f32],
    stored: bool,
) {
    let jobs = jobs(problem);
    let mut rows = job_rows(problem, &jobs, out);
    run_jobs(problem, &jobs, &mut rows, |job, out| {
        dispatch(
            isa,
            BackwardJob {
                problem,
                term,
                grad,
                job,
                out,
                stored,
            },
        )
    });
}

/// `∂L/∂p = g_I·∂I/∂p + g_P·∂P/∂p` of every class over one block of [`backward_job`], into
/// `s.dp` (`[class][BLOCK]`); `g(s, c)`: `∂L/∂` sum `s` of class `c` of this sample.
/// `IN_PLACE`: the probabilities are read from `out` (the block at `local`), else from
/// `s.probs`.
#[inline(always)]
fn block_grads<S: Simd, const SOFT: bool, const IN_PLACE: bool>(
    problem: &Problem,
    block @ (_, _, len): Job,
    g: &impl Fn(usize, usize) -> f32,
    s: &mut Scratch,
    (out, local): (&[&mut [f32]], usize),
) {
    let factors = squared_factors::<S>(problem);
    let (w, labels) = (&s.w[..len], &s.labels[..len]);
    for (c, row) in out.iter().enumerate().take(problem.classes) {
        let (gi, gp) = (splat::<S>(g(0, c)), splat::<S>(g(1, c)));
        let p = if IN_PLACE {
            &row[local..local + len]
        } else {
            &s.probs[c * BLOCK..c * BLOCK + len]
        };
        let d = &mut s.dp[c * BLOCK..c * BLOCK + len];
        let target = TargetRow::of(problem, block, c, labels);
        for k in (0..len).step_by(lanes::<S>()) {
            let wk = load::<S>(w, k);
            let tw = target.times(k, wk);
            let (d_i, d_p) = pixel_grads::<S, SOFT>(load(p, k), wk, tw, factors);
            store(d, k, gi.mul_add(d_i, gp * d_p));
        }
    }
}

/// `∂L/∂x` of every class of a block from `∂L/∂p` (`s.dp`) through the activation, into `out`
/// (the block at `local`). `IN_PLACE`: the probabilities are read from `out` itself, each
/// element before the gradient overwrites it, else from `s.probs`.
#[inline(always)]
fn activation_backward<S: Simd, const IN_PLACE: bool>(
    problem: &Problem,
    len: usize,
    local: usize,
    s: &Scratch,
    out: &mut [&mut [f32]],
) {
    fn class_row(v: &[f32], c: usize, len: usize) -> &[f32] {
        &v[c * BLOCK..c * BLOCK + len]
    }
    let row = |v, c| class_row(v, c, len);
    // The probabilities of the pixels at `k` of class `c`, whose output row is `o`.
    let p_at = |o: &[f32], c: usize, k: usize| {
        if IN_PLACE {
            load::<S>(o, k)
        } else {
            load::<S>(row(&s.probs, c), k)
        }
    };
    match problem.activation {
        Activation::None => {
            for (c, o) in out.iter_mut().enumerate() {
                o[local..local + len].copy_from_slice(row(&s.dp, c));
            }
        }
        Activation::Sigmoid => {
            let one = splat::<S>(1.0);
            for (c, o) in out.iter_mut().enumerate() {
                let (d, o) = (row(&s.dp, c), &mut o[local..local + len]);
                for k in (0..len).step_by(lanes::<S>()) {
                    let pk = p_at(o, c, k);
                    store(o, k, load::<S>(d, k) * pk * (one - pk));
                }
            }
        }
        Activation::Softmax => {
            // `p_c (dp_c − Σ_k p_k dp_k)`, with the dot product refined once: `r = Σ_k p_k
            // dp_k`, then `p_c ((dp_c − r) − Σ_k p_k (dp_k − r))`. Where every `dp_k` is
            // equal (a loss that does not change along the softmax, e.g. `soft_label`'s
            // `Σ |p|` over all classes) the plain form leaves `1e-7·dp`, as `Σ_k p_k` rounds
            // off 1 in f32 (found by the soak); the refined one leaves `1e-14·dp`. Class by
            // class, each loop over one contiguous row.
            let (mut dot, mut refine) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
            let (dot, refine) = (&mut dot[..len], &mut refine[..len]);
            for (c, o) in out.iter().enumerate() {
                let (o, d) = (&o[local..local + len], row(&s.dp, c));
                for k in (0..len).step_by(lanes::<S>()) {
                    store(dot, k, p_at(o, c, k).mul_add(load(d, k), load(dot, k)));
                }
            }
            for (c, o) in out.iter().enumerate() {
                let (o, d) = (&o[local..local + len], row(&s.dp, c));
                for k in (0..len).step_by(lanes::<S>()) {
                    let centred = load::<S>(d, k) - load(dot, k);
                    store(refine, k, p_at(o, c, k).mul_add(centred, load(refine, k)));
                }
            }
            for (c, o) in out.iter_mut().enumerate() {
                let (d, o) = (row(&s.dp, c), &mut o[local..local + len]);
                for k in (0..len).step_by(lanes::<S>()) {
                    let centred = load::<S>(d, k) - load(dot, k);
                    store(o, k, p_at(o, c, k) * (centred - load(refine, k)));
                }
            }
        }
    }
}

/// The statistics' gradient of one block of [`backward_job`] into `out`; `IN_PLACE`: see
/// [`activation_backward`]. Full blocks go through with a constant length, as in the forward
/// pass.
#[inline(always)]
fn grads_block<S: Simd, const IN_PLACE: bool>(
    problem: &Problem,
    (b, n0, len): Job,
    g: &impl Fn(usize, usize) -> f32,
    local: usize,
    s: &mut Scratch,
    out: &mut [&mut [f32]],
) {
    if len == BLOCK {
        block_grads_and_activation::<S, IN_PLACE>(problem, (b, n0, BLOCK), g, local, s, out);
    } else {
        block_grads_and_activation::<S, IN_PLACE>(problem, (b, n0, len), g, local, s, out);
    }
}

/// [`grads_block`] at one block length.
#[inline(always)]
fn block_grads_and_activation<S: Simd, const IN_PLACE: bool>(
    problem: &Problem,
    block @ (_, _, len): Job,
    g: &impl Fn(usize, usize) -> f32,
    local: usize,
    s: &mut Scratch,
    out: &mut [&mut [f32]],
) {
    if problem.terms == Terms::SoftL1 {
        block_grads::<S, true, IN_PLACE>(problem, block, g, s, (out, local));
    } else {
        block_grads::<S, false, IN_PLACE>(problem, block, g, s, (out, local));
    }
    activation_backward::<S, IN_PLACE>(problem, len, local, s, out);
}

/// One job of [`backward`] (`stored`: the probabilities are read from `out`, then replaced).
#[inline(always)]
fn backward_job<S: Simd, E: PixelTerm>(
    problem: &Problem,
    term: &E,
    grad: &[f32],
    (b, start, count): Job,
    out: &mut [&mut [f32]],
    stored: bool,
) {
    let (b_count, c_count) = (problem.batch, problem.classes);
    let g = |s: usize, c: usize| grad[(s * b_count + b) * c_count + c];
    let g_term = |r: usize, c: usize| g(3 + r, c);
    let mut term_scratch = term.scratch();
    let mut s = Scratch::new(c_count);
    // Stored probabilities that no term reads are read where they are (no copy to scratch).
    let in_place = stored && !E::READS_PROBS;
    for (n0, len, local) in blocks(start, count) {
        if !stored {
            activate::<S>(problem, (b, n0, len), &mut s.probs, &mut s.max, &mut s.sum);
        } else if !in_place {
            for (c, row) in out.iter().enumerate() {
                s.probs[c * BLOCK..c * BLOCK + len].copy_from_slice(&row[local..local + len]);
            }
        }
        load_aux(problem, (b, n0, len), &mut s.w, &mut s.labels);
        if in_place {
            grads_block::<S, true>(problem, (b, n0, len), &g, local, &mut s, out);
        } else {
            grads_block::<S, false>(problem, (b, n0, len), &g, local, &mut s, out);
        }
        // Added to the statistics' gradient just written.
        let data = s.data(problem.activation, len, false);
        term.backward_block::<S>(&mut term_scratch, (b, n0, len), &data, local, &g_term, out);
    }
}

kernel_job!(ForwardJob<'a, 'b, 't, 'o, 'r; E: PixelTerm> {
    problem: &'a Problem<'b>,
    term: &'t E,
    job: Job,
    out: &'o mut [&'r mut [MaybeUninit<f32>]],
} -> (Vec<f64>, bool) = forward_job::<S, E>(problem, term, job, out));

kernel_job!(BackwardJob<'a, 'b, 't, 'g, 'o, 'r; E: PixelTerm> {
    problem: &'a Problem<'b>,
    term: &'t E,
    grad: &'g [f32],
    job: Job,
    out: &'o mut [&'r mut [f32]],
    stored: bool,
} -> () = backward_job::<S, E>(problem, term, grad, job, out, stored));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::term::NoTerm;

    // The statistics alone (the terms' own tests, and every term at every level: `pass.rs`).
    fn forward(problem: &Problem, term: &NoTerm) -> Sums {
        forward_on(Isa::best(), problem, term, None)
    }

    fn forward_storing(problem: &Problem, term: &NoTerm) -> (Sums, Vec<f32>) {
        forward_storing_on(Isa::best(), problem, term)
    }

    fn backward(problem: &Problem, term: &NoTerm, grad: &[f32]) -> Vec<f32> {
        let mut dx = vec![0.0f32; problem.x.len()];
        backward_on(Isa::best(), problem, term, grad, &mut dx, false);
        dx
    }

    fn backward_stored(problem: &Problem, term: &NoTerm, grad: &[f32], probs: &mut [f32]) {
        backward_on(Isa::best(), problem, term, grad, probs, true);
    }
    use crate::cpu::common::Labels;
    use crate::cpu::jobs::{JOB, PARALLEL_MIN};

    fn problem<'a>(
        x: &'a [f32],
        target: Target<'a>,
        valid: Option<&'a [f32]>,
        activation: Activation,
    ) -> Problem<'a> {
        Problem {
            x,
            target,
            valid,
            batch: 1,
            classes: 2,
            pixels: 3,
            activation,
            terms: Terms::Linear,
        }
    }

    #[test]
    fn sums_by_hand() {
        // Two classes, three pixels, no activation: p = x.
        let x = [0.2, 0.6, 0.5, 0.8, 0.4, 0.5];
        let labels = [1i64, 0, 1];
        let sums = forward(
            &problem(
                &x,
                Target::Indices(Labels::I64(&labels)),
                None,
                Activation::None,
            ),
            &NoTerm,
        )
        .sums;
        // I: class 0 gets p0[1] = 0.6; class 1 gets p1[0] + p1[2] = 0.8 + 0.5.
        let expected = [0.6, 1.3, 1.3, 1.7, 1.0, 2.0];
        for (a, b) in sums.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{sums:?}");
        }
        // The ignored middle pixel counts nowhere.
        let valid = [1.0, 0.0, 1.0];
        let sums = forward(
            &problem(
                &x,
                Target::Indices(Labels::I32(&[1, 0, 1])),
                Some(&valid),
                Activation::None,
            ),
            &NoTerm,
        )
        .sums;
        let expected = [0.0, 1.3, 0.7, 1.3, 0.0, 2.0];
        for (a, b) in sums.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{sums:?}");
        }
    }

    #[test]
    fn parallel_jobs_match_a_naive_computation() {
        // 2 samples × 3 classes × 30,000 pixels: above PARALLEL_MIN, two jobs per sample.
        let (batch, classes, pixels) = (2, 3, 30_000);
        assert!(batch * classes * pixels >= PARALLEL_MIN && pixels > JOB);
        let x: Vec<f32> = (0..batch * classes * pixels)
            .map(|i| (i as f32 * 0.61).sin() * 3.0)
            .collect();
        let labels: Vec<i64> = (0..batch * pixels).map(|i| (i * 5 % 3) as i64).collect();
        let grad: Vec<f32> = (0..3 * batch * classes)
            .map(|i| (i as f32 * 0.9).cos())
            .collect();
        let problem = Problem {
            x: &x,
            target: Target::Indices(Labels::I64(&labels)),
            valid: None,
            batch,
            classes,
            pixels,
            activation: Activation::Softmax,
            terms: Terms::Linear,
        };
        // Naive f64: softmax per pixel, sums, and dx = p_c (dp_c − Σ_k p_k dp_k).
        let mut sums = vec![0.0f64; 3 * batch * classes];
        let mut dx = vec![0.0f64; x.len()];
        for b in 0..batch {
            for n in 0..pixels {
                let at = |c: usize| (b * classes + c) * pixels + n;
                let e: Vec<f64> = (0..classes).map(|c| (x[at(c)] as f64).exp()).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|v| v / total).collect();
                let label = labels[b * pixels + n] as usize;
                let g = |s: usize, c: usize| grad[(s * batch + b) * classes + c] as f64;
                let dp: Vec<f64> = (0..classes)
                    .map(|c| g(0, c) * (label == c) as u8 as f64 + g(1, c))
                    .collect();
                let dot: f64 = (0..classes).map(|c| p[c] * dp[c]).sum();
                for c in 0..classes {
                    let hit = (label == c) as u8 as f64;
                    sums[b * classes + c] += p[c] * hit;
                    sums[(batch + b) * classes + c] += p[c];
                    sums[(2 * batch + b) * classes + c] += hit;
                    dx[at(c)] = p[c] * (dp[c] - dot);
                }
            }
        }
        let (fused, mut stored) = forward_storing(&problem, &NoTerm);
        assert_eq!(fused, forward(&problem, &NoTerm));
        for (a, b) in fused.sums.iter().zip(&sums) {
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{a} vs {b}"
            );
        }
        let recomputed = backward(&problem, &NoTerm, &grad);
        backward_stored(&problem, &NoTerm, &grad, &mut stored);
        for ((a, s), b) in recomputed.iter().zip(&stored).zip(&dx) {
            assert!((*a as f64 - b).abs() < 1e-5 && (*s as f64 - b).abs() < 1e-5);
        }
    }

    #[test]
    fn data_checks_in_the_forward_pass() {
        let x = [0.2, 0.6, 0.5, 0.8, 0.4, 0.5];
        let dense = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let labels = [1i64, 0, 1];
        fn valid(x: &[f32], target: Target) -> bool {
            forward(&problem(x, target, None, Activation::Softmax), &NoTerm).valid_data
        }
        assert!(valid(&x, Target::Dense(&dense)));
        assert!(valid(&x, Target::Indices(Labels::I64(&labels))));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut y = x;
            y[4] = bad;
            assert!(!valid(&y, Target::Dense(&dense)), "input {bad}");
            let mut t = dense;
            t[5] = bad;
            assert!(!valid(&x, Target::Dense(&t)), "target {bad}");
        }
        for label in [-1i64, 2, 1 << 40] {
            let l = [0, label, 1];
            assert!(
                !valid(&x, Target::Indices(Labels::I64(&l))),
                "label {label}"
            );
        }
        assert!(!valid(&x, Target::Indices(Labels::I32(&[0, 1, 7]))));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = [0.3f32, -1.2, 2.0, 0.7, 0.1, -0.4];
        let dense = [1.0f32, 0.0, 0.5, 0.0, 1.0, 1.0];
        let labels = [1i64, 0, 1];
        let valid = [1.0f32, 0.0, 1.0];
        let grad = [0.7f32, -1.3, 0.2, 0.5, 0.9, -0.1];
        for activation in [Activation::None, Activation::Sigmoid, Activation::Softmax] {
            for terms in [Terms::Linear, Terms::Squared, Terms::SoftL1] {
                for (target, valid) in [
                    (Target::Dense(&dense), None),
                    (Target::Dense(&dense), Some(&valid[..])),
                    (Target::Indices(Labels::I64(&labels)), None),
                    (Target::Indices(Labels::I64(&labels)), Some(&valid[..])),
                ] {
                    let mut p = problem(&x, target, valid, activation);
                    p.terms = terms;
                    let objective = |x: &[f32]| {
                        let sums = forward(&Problem { x, ..p }, &NoTerm).sums;
                        sums.iter()
                            .zip(&grad)
                            .map(|(s, g)| (s * g) as f64)
                            .sum::<f64>()
                    };
                    let dx = backward(&p, &NoTerm, &grad);
                    // The same gradient from the probabilities stored by the forward pass.
                    let (with_probs, mut stored) = forward_storing(&p, &NoTerm);
                    assert_eq!(with_probs, forward(&p, &NoTerm));
                    backward_stored(&Problem { x: &[], ..p }, &NoTerm, &grad, &mut stored);
                    for (a, b) in stored.iter().zip(&dx) {
                        assert!((a - b).abs() < 1e-6, "{activation:?}: {stored:?} vs {dx:?}");
                    }
                    for i in 0..x.len() {
                        let h = 1e-3f32;
                        let (mut up, mut down) = (x, x);
                        up[i] += h;
                        down[i] -= h;
                        let fd = (objective(&up) - objective(&down)) / (2.0 * h as f64);
                        assert!(
                            (fd - dx[i] as f64).abs() < 2e-3,
                            "{activation:?} {terms:?} {target:?} {valid:?} x[{i}]: \
                             {} vs {fd}",
                            dx[i]
                        );
                    }
                }
            }
        }
    }
}
