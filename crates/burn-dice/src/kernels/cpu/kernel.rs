//! The fused per-(sample, class) statistics over contiguous `f32` slices: one pass forward, one
//! pass backward, from the probabilities the forward pass stored or with the activation
//! recomputed.
//!
//! Layout: `x` is `[batch, class, pixels]` row-major; dense targets have the same layout; class
//! indices and the validity weights are `[batch, pixels]`. Work is split into jobs of one sample
//! and a run of pixels; each job walks its pixels in blocks of [`BLOCK`], computes the
//! probabilities of all classes of a block into a scratch buffer and accumulates the three sums
//! in [`LANES`] independent `f32` lanes per class (registers: one AVX-512 vector), added into
//! `f64` lanes after each block and summed across at the end of the job.

use std::mem::MaybeUninit;

use crate::activation::Activation;
use crate::kernels::input::Terms;

pub(crate) mod ce;
pub(crate) mod focal;

/// Pixels per block.
const BLOCK: usize = 256;
/// Independent `f32` accumulators per sum.
const LANES: usize = 16;
/// Pixels per job (per thread task).
const JOB: usize = 16 * 1024;
/// Below this many input elements everything runs on the calling thread.
const PARALLEL_MIN: usize = 64 * 1024;

/// Class-index labels of either integer width.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Labels<'a> {
    I64(&'a [i64]),
    I32(&'a [i32]),
}

impl Labels<'_> {
    /// The labels of `range` as `f32` (exact for any class count below 2^24), into `out`.
    #[inline(always)]
    fn fill(&self, start: usize, out: &mut [f32]) {
        match self {
            Labels::I64(l) => {
                let len = out.len();
                for (o, &v) in out.iter_mut().zip(&l[start..start + len]) {
                    *o = v as f32;
                }
            }
            Labels::I32(l) => {
                let len = out.len();
                for (o, &v) in out.iter_mut().zip(&l[start..start + len]) {
                    *o = v as f32;
                }
            }
        }
    }
}

/// What the statistics are taken against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// `[batch, class, pixels]`.
    Dense(&'a [f32]),
    /// `[batch, pixels]`.
    Indices(Labels<'a>),
}

/// One statistics problem.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem<'a> {
    pub x: &'a [f32],
    pub target: Target<'a>,
    /// `[batch, pixels]` weights (0/1: the pixels that count), or every pixel.
    pub valid: Option<&'a [f32]>,
    pub batch: usize,
    pub classes: usize,
    pub pixels: usize,
    pub activation: Activation,
    pub terms: Terms,
}

/// `a·b + c`, as one fused multiply-add where the caller is compiled for FMA (`FMA`), else a
/// product and a sum (a software `fma` would be slow there).
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `f32`, branch-free so that loops over it vectorize: Cody-Waite range reduction
/// `x = k·ln 2 + r` and Cephes' degree-6 polynomial for `e^r` (relative error about 1 ulp on the
/// whole range; inputs are clamped to `[-87.3, 88.3]`, so `e^x` never overflows and underflows to
/// about 1e-38 instead of 0). `FMA`: see [`mul_add`].
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest through the float mantissa (no SSE4.1 `round` needed).
    const MAGIC: f32 = 12_582_912.0;
    // `max`/`min` rather than `clamp`: they compile to vmaxps/vminps, `clamp` did not vectorize.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.3).min(88.3);
    let shifted = mul_add::<FMA>(x, LOG2E, MAGIC);
    let k = shifted - MAGIC;
    // The integer k sits in the low mantissa bits of `shifted`: no float-to-int conversion
    // (whose saturating form does not vectorize).
    let k_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = mul_add::<FMA>(-k, LN2_LO, mul_add::<FMA>(-k, LN2_HI, x));
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = mul_add::<FMA>(p, r, 1.398_199_9e-3);
    let p = mul_add::<FMA>(p, r, 8.333_452e-3);
    let p = mul_add::<FMA>(p, r, 4.166_579_6e-2);
    let p = mul_add::<FMA>(p, r, 1.666_666_5e-1);
    let p = mul_add::<FMA>(p, r, 0.5);
    let e = mul_add::<FMA>(p, r2, r + 1.0);
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    e * scale
}

/// The probabilities of the classes of pixels `n0..n0 + len` of sample `b` into
/// `probs[c * BLOCK..c * BLOCK + len]`.
#[inline(always)]
fn activate<const FMA: bool>(
    problem: &Problem,
    b: usize,
    n0: usize,
    len: usize,
    probs: &mut [f32],
) {
    let (c_count, n) = (problem.classes, problem.pixels);
    let row = |c: usize| &problem.x[(b * c_count + c) * n + n0..][..len];
    match problem.activation {
        Activation::None => {
            for c in 0..c_count {
                probs[c * BLOCK..c * BLOCK + len].copy_from_slice(row(c));
            }
        }
        Activation::Sigmoid => {
            for c in 0..c_count {
                for (p, &v) in probs[c * BLOCK..c * BLOCK + len].iter_mut().zip(row(c)) {
                    *p = 1.0 / (1.0 + exp::<FMA>(-v));
                }
            }
        }
        Activation::Softmax => {
            let (mut max, mut sum) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
            softmax_exps::<FMA>(c_count, len, row, probs, &mut max, &mut sum);
            let sum = &mut sum[..len];
            for s in sum.iter_mut() {
                *s = 1.0 / *s;
            }
            for c in 0..c_count {
                for (p, s) in probs[c * BLOCK..c * BLOCK + len].iter_mut().zip(sum.iter()) {
                    *p *= s;
                }
            }
        }
    }
}

/// The unnormalized softmax of a block: `e[c·BLOCK + k] = e^(x_c − max)`, with the per-pixel
/// `max` and `sum = Σ_c e` (the first `len` entries of each), from the class rows `row(c)`.
#[inline(always)]
pub(super) fn softmax_exps<'x, const FMA: bool>(
    c_count: usize,
    len: usize,
    row: impl Fn(usize) -> &'x [f32],
    e: &mut [f32],
    max: &mut [f32; BLOCK],
    sum: &mut [f32; BLOCK],
) {
    let (max, sum) = (&mut max[..len], &mut sum[..len]);
    max.fill(f32::NEG_INFINITY);
    for c in 0..c_count {
        for (m, &v) in max.iter_mut().zip(row(c)) {
            *m = m.max(v);
        }
    }
    sum.fill(0.0);
    for c in 0..c_count {
        let e = &mut e[c * BLOCK..c * BLOCK + len];
        let r = &row(c)[..len];
        for k in 0..len {
            e[k] = exp::<FMA>(r[k] - max[k]);
            sum[k] += e[k];
        }
    }
}

/// The validity weights of a block (ones when every pixel counts).
#[inline(always)]
fn weights(problem: &Problem, b: usize, n0: usize, len: usize, out: &mut [f32; BLOCK]) {
    match problem.valid {
        Some(v) => out[..len].copy_from_slice(&v[b * problem.pixels + n0..][..len]),
        None => out[..len].fill(1.0),
    }
}

/// Loads the weights and (for class indices) the labels of pixels `n0..n0 + len` of sample `b`.
#[inline(always)]
fn load_aux(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    w: &mut [f32; BLOCK],
    labels: &mut [f32; BLOCK],
) {
    weights(problem, b, n0, len, w);
    if let Target::Indices(l) = problem.target {
        l.fill(b * problem.pixels + n0, &mut labels[..len]);
    }
}

/// `1` if a value's exponent is all ones (an infinity or a NaN), else `0`; branch-free.
#[inline(always)]
fn non_finite(v: f32) -> u32 {
    (v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32
}

/// Marks (non-zero in `bad`, lane by lane) a non-finite input value, a dense target value
/// outside `[0, 1]` (NaN and infinities included), or a
/// class index outside `0..classes` (`labels` as loaded by [`load_aux`]) in the block: the
/// checks of `check_inputs`, done on data the forward pass reads anyway.
#[inline(always)]
fn block_bad(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    labels: &[f32],
    bad: &mut [u32; BLOCK],
) {
    let (c_count, n) = (problem.classes, problem.pixels);
    let bad = &mut bad[..len];
    for c in 0..c_count {
        let x = &problem.x[(b * c_count + c) * n + n0..][..len];
        for k in 0..len {
            bad[k] |= non_finite(x[k]);
        }
    }
    match problem.target {
        Target::Dense(t) => {
            for c in 0..c_count {
                let t = &t[(b * c_count + c) * n + n0..][..len];
                for k in 0..len {
                    // Not in [0, 1] (NaN fails the comparison too).
                    bad[k] |= !(0.0..=1.0).contains(&t[k]) as u32;
                }
            }
        }
        Target::Indices(_) => {
            let classes = c_count as f32;
            let labels = &labels[..len];
            for k in 0..len {
                bad[k] |= !(labels[k] >= 0.0 && labels[k] < classes) as u32;
            }
        }
    }
}

/// Branch-free [`Terms::Squared`] or [`Terms::Linear`]: `x·(sq·x + lin)` is `x²` for `(1, 0)`
/// and `x` for `(0, 1)`, both exact.
#[inline(always)]
fn squared_factors(problem: &Problem) -> (f32, f32) {
    if problem.terms == Terms::Squared {
        (1.0, 0.0)
    } else {
        (0.0, 1.0)
    }
}

/// Jobs: `(sample, first pixel, pixel count)`.
type Job = (usize, usize, usize);

/// The jobs of a problem, sample by sample.
fn jobs(problem: &Problem) -> Vec<Job> {
    let mut out = Vec::new();
    for b in 0..problem.batch {
        let mut n0 = 0;
        while n0 < problem.pixels {
            let len = JOB.min(problem.pixels - n0);
            out.push((b, n0, len));
            n0 += len;
        }
    }
    out
}

/// The blocks of the job of pixels `start..start + count`: `(first pixel, pixel count, offset
/// in the job)`, [`BLOCK`] pixels each but the last.
#[inline(always)]
fn blocks(start: usize, count: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (start..start + count)
        .step_by(BLOCK)
        .map(move |n0| (n0, BLOCK.min(start + count - n0), n0 - start))
}

fn parallel(problem: &Problem) -> bool {
    problem.x.len() >= PARALLEL_MIN
}

/// `buf` (`[batch, class, pixels]`) cut along the jobs: for each job of `jobs`, in order, its
/// run of pixels in each class row of its sample. The pieces are disjoint, so the jobs can
/// write them in parallel.
fn job_rows<'a, T>(problem: &Problem, jobs: &[Job], buf: &'a mut [T]) -> Vec<Vec<&'a mut [T]>> {
    let (c_count, n) = (problem.classes, problem.pixels);
    // Every (sample, class) row cut into its jobs' runs, each list reversed to pop in order.
    let mut per_row: Vec<Vec<&mut [T]>> = buf
        .chunks_mut(n)
        .map(|row| {
            let mut parts: Vec<&mut [T]> = row.chunks_mut(JOB).collect();
            parts.reverse();
            parts
        })
        .collect();
    jobs.iter()
        .map(|&(b, _, _)| {
            (0..c_count)
                .map(|c| {
                    per_row[b * c_count + c]
                        .pop()
                        .expect("one run per job and row")
                })
                .collect()
        })
        .collect()
}

/// Runs `job` for each job with its rows of the output, in parallel on large problems.
///
/// The calling thread takes part: it and `threads − 1` tasks spawned on rayon's pool pull jobs
/// from a shared counter until none are left. (A rayon parallel iterator would leave the
/// calling thread asleep until the pool is done, and wake it afterwards: tens of
/// microseconds on a sub-millisecond loss.)
fn run_jobs<T: Send, R: Send>(
    problem: &Problem,
    jobs: &[Job],
    rows: &mut [Vec<&mut [T]>],
    job: impl Fn(Job, &mut [&mut [T]]) -> R + Sync,
) -> Vec<R> {
    if !parallel(problem) {
        return jobs
            .iter()
            .zip(rows.iter_mut())
            .map(|(&j, out)| job(j, out))
            .collect();
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    // One slot per job: its rows, then its result. Each is locked once, by the thread that
    // claimed the job.
    type Slot<'r, 'a, T, R> = Mutex<(&'r mut Vec<&'a mut [T]>, Option<R>)>;
    let slots: Vec<Slot<T, R>> = rows.iter_mut().map(|r| Mutex::new((r, None))).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&j) = jobs.get(i) else { break };
        let mut slot = slots[i].lock().expect("a job slot is locked once");
        let result = job(j, slot.0);
        slot.1 = Some(result);
    };
    let helpers = rayon::current_num_threads()
        .saturating_sub(1)
        .min(jobs.len());
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| work());
        }
        work();
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("no job panicked")
                .1
                .expect("every job ran")
        })
        .collect()
}

/// Runs `job` for every job of `problem` (nothing written), in parallel on large problems.
fn map_jobs<R: Send>(problem: &Problem, job: impl Fn(Job) -> R + Sync) -> Vec<(Job, R)> {
    let jobs = jobs(problem);
    let mut rows: Vec<Vec<&mut [f32]>> = jobs.iter().map(|_| Vec::new()).collect();
    let out = run_jobs(problem, &jobs, &mut rows, |j, _| job(j));
    jobs.into_iter().zip(out).collect()
}

/// A new buffer of the input's size, each job writing its rows (every element) with `job`.
fn write_jobs(problem: &Problem, job: impl Fn(Job, &mut [&mut [f32]]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; problem.x.len()];
    let jobs = jobs(problem);
    let mut rows = job_rows(problem, &jobs, &mut out);
    run_jobs(problem, &jobs, &mut rows, job);
    out
}

/// Scratch space of one forward job.
struct ForwardScratch {
    /// `[class][BLOCK]` probabilities of the block.
    probs: Vec<f32>,
    w: [f32; BLOCK],
    labels: [f32; BLOCK],
    bad: [u32; BLOCK],
    /// `[class][stat][LANES]` running sums.
    wide: Vec<f64>,
}

/// Three sums in `LANES` independent lanes each: `f32` registers inside a block.
type Acc = [[f32; LANES]; 3];

/// Adds the block sums `acc` into `wide` (`[3][LANES]` `f64`).
#[inline(always)]
fn widen(acc: &Acc, wide: &mut [f64]) {
    let wide: &mut [f64; 3 * LANES] = wide.try_into().expect("3 × LANES lanes");
    for s in 0..3 {
        for j in 0..LANES {
            wide[s * LANES + j] += acc[s][j] as f64;
        }
    }
}

/// One block of [`forward_job`]: pixels `n0..n0 + len` of sample `b`, `local` pixels into the
/// job. Called with `len = BLOCK` for full blocks, so that those loops have a constant length.
#[inline(always)]
fn forward_block<const FMA: bool>(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    local: usize,
    out: &mut [&mut [MaybeUninit<f32>]],
    scratch: &mut ForwardScratch,
) {
    let ForwardScratch {
        probs,
        w,
        labels,
        bad,
        wide,
    } = scratch;
    activate::<FMA>(problem, b, n0, len, probs);
    load_aux(problem, (b, n0, len), w, labels);
    block_bad(problem, (b, n0, len), &labels[..], bad);
    for (c, row) in out.iter_mut().enumerate() {
        for (o, &p) in row[local..local + len].iter_mut().zip(&probs[c * BLOCK..]) {
            o.write(p);
        }
    }
    let (w, labels) = (&w[..len], &labels[..len]);
    // One copy of the class loop per kind of terms, so that neither carries a branch.
    if problem.terms == Terms::SoftL1 {
        block_sums::<true>(problem, (b, n0, len), probs, w, labels, wide);
    } else {
        block_sums::<false>(problem, (b, n0, len), probs, w, labels, wide);
    }
}

/// The terms `[I, P, T]` of one pixel (see [`Terms`]), from `pw = p·w` and `tw = t·w`;
/// `(sq, lin)`: see [`squared_factors`]. `SOFT`: [`Terms::SoftL1`].
#[inline(always)]
fn pixel_terms<const SOFT: bool>(pw: f32, tw: f32, (sq, lin): (f32, f32)) -> [f32; 3] {
    if SOFT {
        [Terms::soft_intersection(pw, tw), pw.abs(), tw.abs()]
    } else {
        [pw * tw, pw * (sq * pw + lin), tw * (sq * tw + lin)]
    }
}

/// `(∂I/∂p, ∂P/∂p)` of one pixel, from `p`, its weight `w` and `tw = t·w` (the derivatives of
/// [`pixel_terms`] through `pw = p·w`).
#[inline(always)]
fn pixel_grads<const SOFT: bool>(p: f32, w: f32, tw: f32, (sq, lin): (f32, f32)) -> (f32, f32) {
    if SOFT {
        let (d_i, d_p) = Terms::d_soft(p * w, tw);
        (d_i * w, d_p * w)
    } else {
        (tw * w, w * (sq * 2.0 * p * w + lin))
    }
}

/// The sums of every class over one block of [`forward_block`], added to `wide`.
#[inline(always)]
fn block_sums<const SOFT: bool>(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    probs: &[f32],
    w: &[f32],
    labels: &[f32],
    wide: &mut [f64],
) {
    let c_count = problem.classes;
    let factors = squared_factors(problem);
    for c in 0..c_count {
        let p = &probs[c * BLOCK..c * BLOCK + len];
        let mut acc: Acc = [[0.0f32; LANES]; 3];
        let mut tail = [0.0f32; 3];
        let add = |acc: &mut [f32; 3], terms: [f32; 3]| {
            for s in 0..3 {
                acc[s] += terms[s];
            }
        };
        match problem.target {
            Target::Dense(t) => {
                let t = &t[(b * c_count + c) * problem.pixels + n0..][..len];
                let chunks = p
                    .chunks_exact(LANES)
                    .zip(t.chunks_exact(LANES))
                    .zip(w.chunks_exact(LANES));
                for ((p, t), w) in chunks {
                    for j in 0..LANES {
                        // (p·w)·(t·w), as the generic path multiplies both by the mask.
                        let terms = pixel_terms::<SOFT>(p[j] * w[j], t[j] * w[j], factors);
                        for s in 0..3 {
                            acc[s][j] += terms[s];
                        }
                    }
                }
                // The tail of a partial block, into `tail` (a dynamic lane index would keep
                // the lanes out of registers).
                for k in len - len % LANES..len {
                    add(
                        &mut tail,
                        pixel_terms::<SOFT>(p[k] * w[k], t[k] * w[k], factors),
                    );
                }
            }
            Target::Indices(_) => {
                let class = c as f32;
                let chunks = p
                    .chunks_exact(LANES)
                    .zip(labels.chunks_exact(LANES))
                    .zip(w.chunks_exact(LANES));
                for ((p, l), w) in chunks {
                    for j in 0..LANES {
                        let hit = if l[j] == class { w[j] } else { 0.0 };
                        let terms = pixel_terms::<SOFT>(p[j] * w[j], hit, factors);
                        for s in 0..3 {
                            acc[s][j] += terms[s];
                        }
                    }
                }
                for k in len - len % LANES..len {
                    let hit = if labels[k] == class { w[k] } else { 0.0 };
                    add(&mut tail, pixel_terms::<SOFT>(p[k] * w[k], hit, factors));
                }
            }
        }
        for s in 0..3 {
            acc[s][0] += tail[s];
        }
        widen(&acc, &mut wide[3 * c * LANES..3 * (c + 1) * LANES]);
    }
}

/// Sums of one job, `[3][classes]` (intersection, prediction, target), and whether
/// [`block_bad`] marked anything. With `out` non-empty, the probabilities are also written
/// there (one run per class).
#[inline(always)]
fn forward_job<const FMA: bool>(
    problem: &Problem,
    (b, start, count): Job,
    out: &mut [&mut [MaybeUninit<f32>]],
) -> (Vec<f64>, u32) {
    let c_count = problem.classes;
    let mut scratch = ForwardScratch {
        probs: vec![0.0; c_count * BLOCK],
        w: [0.0; BLOCK],
        labels: [0.0; BLOCK],
        bad: [0; BLOCK],
        wide: vec![0.0; 3 * c_count * LANES],
    };
    for (n0, len, local) in blocks(start, count) {
        if len == BLOCK {
            forward_block::<FMA>(problem, (b, n0, BLOCK), local, out, &mut scratch);
        } else {
            forward_block::<FMA>(problem, (b, n0, len), local, out, &mut scratch);
        }
    }
    // Lanes are [class][stat][LANES]; the sums are [stat][class].
    let mut out = vec![0.0f64; 3 * c_count];
    for (i, lane) in scratch.wide.chunks_exact(LANES).enumerate() {
        let (c, s) = (i / 3, i % 3);
        out[s * c_count + c] = lane.iter().sum::<f64>();
    }
    (out, scratch.bad.iter().fold(0, |acc, &v| acc | v))
}

/// What the forward pass returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sums {
    /// The three `[batch, class]` tables, stacked: `[3, batch, class]`.
    pub sums: Vec<f32>,
    /// Every input and dense target value is finite and every class index is in
    /// `0..classes` (the data checks of `check_inputs`).
    pub valid_data: bool,
}

/// The statistics of `problem`.
pub(crate) fn forward(problem: &Problem) -> Sums {
    forward_on(Isa::best(), problem, None)
}

/// [`forward`], and the probabilities (the input's size), for [`backward_stored`].
pub(crate) fn forward_storing(problem: &Problem) -> (Sums, Vec<f32>) {
    forward_storing_on(Isa::best(), problem)
}

/// [`forward_storing`] compiled for `isa`, which the CPU must support.
#[allow(unsafe_code)]
pub(crate) fn forward_storing_on(isa: Isa, problem: &Problem) -> (Sums, Vec<f32>) {
    // Not zeroed: every element is written below, and zeroing is a serial pass as long as the
    // kernel itself on one core.
    let mut probs = Vec::with_capacity(problem.x.len());
    let sums = forward_on(isa, problem, Some(probs.spare_capacity_mut()));
    // SAFETY: `forward_on` wrote every element: the jobs cover every (sample, pixel), and each
    // writes its pixels of every class row (`job_rows`, `forward_block`), whatever the data.
    unsafe { probs.set_len(problem.x.len()) };
    (sums, probs)
}

/// The statistics of `problem` compiled for `isa` (which the CPU must support); with `probs`
/// (the input's size) the probabilities are written there too.
fn forward_on(isa: Isa, problem: &Problem, probs: Option<&mut [MaybeUninit<f32>]>) -> Sums {
    let (b_count, c_count) = (problem.batch, problem.classes);
    let jobs = jobs(problem);
    let mut rows = match probs {
        Some(buf) => job_rows(problem, &jobs, buf),
        None => jobs.iter().map(|_| Vec::new()).collect(),
    };
    let partial = run_jobs(problem, &jobs, &mut rows, |job, out| {
        dispatch(isa, ForwardJob { problem, job, out })
    });
    let mut out = vec![0.0f64; 3 * b_count * c_count];
    let mut bad = 0;
    for (&(b, _, _), (sums, job_bad)) in jobs.iter().zip(&partial) {
        bad |= job_bad;
        for s in 0..3 {
            for c in 0..c_count {
                out[(s * b_count + b) * c_count + c] += sums[s * c_count + c];
            }
        }
    }
    Sums {
        sums: out.into_iter().map(|v| v as f32).collect(),
        valid_data: bad == 0,
    }
}

/// The gradient with respect to `x` of `Σ g_I·I + g_P·P + g_T·T` for `grad` = `[3, batch, class]`
/// (`T` does not depend on `x`), the activation recomputed from `x`.
///
/// With `pw = p·w` and `tw = t·w` (`w·[label = c]` for indices): `∂I/∂p = tw·w`, `∂P/∂p = w`
/// or `2·p·w²` ([`Terms::Squared`]); with [`Terms::SoftL1`], `∂I/∂p = w·(sgn pw − sgn(pw −
/// tw))/2` and `∂P/∂p = w·sgn pw` ([`Terms::d_soft`]); then through the activation: sigmoid
/// `p(1 − p)`, softmax `p_c (dp_c − Σ_k p_k dp_k)`.
pub(crate) fn backward(problem: &Problem, grad: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; problem.x.len()];
    backward_on(Isa::best(), problem, grad, &mut dx, false);
    dx
}

/// [`backward`] from the probabilities that [`forward`] stored in `probs`, overwritten in
/// place by the gradient: no activation to recompute and no new buffer. `problem.x` is not
/// read.
pub(crate) fn backward_stored(problem: &Problem, grad: &[f32], probs: &mut [f32]) {
    backward_on(Isa::best(), problem, grad, probs, true);
}

/// The backward pass compiled for `isa` (which the CPU must support) into `out`; `stored`: see
/// [`backward_stored`].
pub(crate) fn backward_on(
    isa: Isa,
    problem: &Problem,
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
                grad,
                job,
                out,
                stored,
            },
        )
    });
}

/// `∂L/∂p = g_I·∂I/∂p + g_P·∂P/∂p` of every class over one block of [`backward_job`], into
/// `dp` (`[class][BLOCK]`); `g(s, c)`: `∂L/∂` sum `s` of class `c` of this sample.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_grads<const SOFT: bool>(
    problem: &Problem,
    (b, n0, len): (usize, usize, usize),
    g: &impl Fn(usize, usize) -> f32,
    probs: &[f32],
    w: &[f32],
    labels: &[f32],
    dp: &mut [f32],
) {
    let c_count = problem.classes;
    let factors = squared_factors(problem);
    for c in 0..c_count {
        let (gi, gp) = (g(0, c), g(1, c));
        let p = &probs[c * BLOCK..c * BLOCK + len];
        let d = &mut dp[c * BLOCK..c * BLOCK + len];
        match problem.target {
            Target::Dense(t) => {
                let t = &t[(b * c_count + c) * problem.pixels + n0..][..len];
                for k in 0..len {
                    let (d_i, d_p) = pixel_grads::<SOFT>(p[k], w[k], t[k] * w[k], factors);
                    d[k] = gi * d_i + gp * d_p;
                }
            }
            Target::Indices(_) => {
                let class = c as f32;
                for k in 0..len {
                    let hit = if labels[k] == class { w[k] } else { 0.0 };
                    let (d_i, d_p) = pixel_grads::<SOFT>(p[k], w[k], hit, factors);
                    d[k] = gi * d_i + gp * d_p;
                }
            }
        }
    }
}

/// One job of [`backward`] (`stored`: the probabilities are read from `out`, then replaced).
#[inline(always)]
fn backward_job<const FMA: bool>(
    problem: &Problem,
    grad: &[f32],
    (b, start, count): Job,
    out: &mut [&mut [f32]],
    stored: bool,
) {
    let (b_count, c_count) = (problem.batch, problem.classes);
    let g = |s: usize, c: usize| grad[(s * b_count + b) * c_count + c];
    let mut probs = vec![0.0f32; c_count * BLOCK];
    let mut dp = vec![0.0f32; c_count * BLOCK];
    let mut w = [0.0f32; BLOCK];
    let mut labels = [0.0f32; BLOCK];
    for (n0, len, local) in blocks(start, count) {
        if stored {
            for (c, row) in out.iter().enumerate() {
                probs[c * BLOCK..c * BLOCK + len].copy_from_slice(&row[local..local + len]);
            }
        } else {
            activate::<FMA>(problem, b, n0, len, &mut probs);
        }
        load_aux(problem, (b, n0, len), &mut w, &mut labels);
        let (w, labels) = (&w[..len], &labels[..len]);
        if problem.terms == Terms::SoftL1 {
            block_grads::<true>(problem, (b, n0, len), &g, &probs, w, labels, &mut dp);
        } else {
            block_grads::<false>(problem, (b, n0, len), &g, &probs, w, labels, &mut dp);
        }
        match problem.activation {
            Activation::None => {
                for c in 0..c_count {
                    out[c][local..local + len].copy_from_slice(&dp[c * BLOCK..c * BLOCK + len]);
                }
            }
            Activation::Sigmoid => {
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    let o = &mut out[c][local..local + len];
                    for k in 0..len {
                        o[k] = d[k] * p[k] * (1.0 - p[k]);
                    }
                }
            }
            Activation::Softmax => {
                // `p_c (dp_c − Σ_k p_k dp_k)`, with the dot product refined once: `r = Σ_k p_k
                // dp_k`, then `p_c ((dp_c − r) − Σ_k p_k (dp_k − r))`. Where every `dp_k` is
                // equal (a loss that does not change along the softmax, e.g. `soft_label`'s
                // `Σ |p|` over all classes) the plain form leaves `1e-7·dp`, as `Σ_k p_k` rounds
                // off 1 in f32 (found by the soak); the refined one leaves `1e-14·dp`.
                let mut dot = [0.0f32; BLOCK];
                let dot = &mut dot[..len];
                let mut refine = [0.0f32; BLOCK];
                let refine = &mut refine[..len];
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    for k in 0..len {
                        dot[k] += p[k] * d[k];
                    }
                }
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    for k in 0..len {
                        refine[k] += p[k] * (d[k] - dot[k]);
                    }
                }
                for c in 0..c_count {
                    let p = &probs[c * BLOCK..c * BLOCK + len];
                    let d = &dp[c * BLOCK..c * BLOCK + len];
                    let o = &mut out[c][local..local + len];
                    for k in 0..len {
                        o[k] = p[k] * ((d[k] - dot[k]) - refine[k]);
                    }
                }
            }
        }
    }
}

/// Whether every value is finite (one vectorized pass; both cores on large inputs).
pub(crate) fn all_finite(x: &[f32]) -> bool {
    // An exponent of all ones is an infinity or a NaN.
    let bad = |c: &[f32]| {
        c.iter().fold(0u32, |acc, v| {
            acc | ((v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        }) != 0
    };
    if x.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        !x.par_chunks(JOB * 4).any(bad)
    } else {
        !bad(x)
    }
}

/// Whether every label is in `0..classes` or equal to `ignore`.
pub(crate) fn labels_in_range(labels: Labels, classes: usize, ignore: Option<usize>) -> bool {
    let (has_ignore, ignore) = (ignore.is_some(), ignore.unwrap_or(0) as i64);
    let n = classes as i64;
    let ok = |v: i64| (0 <= v && v < n) | (has_ignore & (v == ignore));
    match labels {
        Labels::I64(l) => l.iter().fold(true, |acc, &v| acc & ok(v)),
        Labels::I32(l) => l.iter().fold(true, |acc, &v| acc & ok(v as i64)),
    }
}

// Runtime dispatch to an AVX2 + FMA build of the same loops where the CPU has them (8 lanes
// instead of SSE2's 4); the code is identical, only the instruction set differs.

/// The instruction sets the jobs are compiled for; the code is the same, only the vector width
/// (SSE2's 4 lanes, AVX2's 8, AVX-512's 16) and the fused multiply-adds differ. Chosen at run
/// time from what the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 (F and VL), AVX2 and FMA.
    Avx512,
}

impl Isa {
    /// The widest this CPU runs.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// Every level this CPU runs (for tests).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&isa| isa == Isa::Baseline || Isa::best() == isa || Isa::best() == Isa::Avx512)
            .collect()
    }
}

/// One job of a kernel, compiled for whichever instruction set [`dispatch`] picks:
/// `run::<true>` inside the AVX2 and AVX-512 builds (fused multiply-adds), `run::<false>` for
/// the baseline.
pub(super) trait Kernel {
    type Out;
    fn run<const FMA: bool>(self) -> Self::Out;
}

/// A module whose `run` runs a [`Kernel`] compiled with `$features` enabled; calling it is
/// sound only on a CPU that has those features.
macro_rules! build_for {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            #[target_feature(enable = $features)]
            pub(super) fn run<K: super::Kernel>(kernel: K) -> K::Out {
                kernel.run::<true>()
            }
        }
    };
}

build_for!(avx2, "avx2,fma");
build_for!(avx512, "avx512f,avx512vl,avx2,fma");

/// Runs `kernel` compiled for `isa`, which must be at most [`Isa::best`].
#[allow(unsafe_code)]
pub(super) fn dispatch<K: Kernel>(isa: Isa, kernel: K) -> K::Out {
    match isa {
        // SAFETY: `isa` is at most `Isa::best()`: the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::run(kernel) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::run(kernel) },
        _ => kernel.run::<false>(),
    }
}

/// A [`Kernel`] from a job function generic over `FMA`: `kernel_job!(Name, |args| body)`
/// declares the struct `Name` holding the arguments and its `run`, which evaluates `body`
/// with the const `FMA` in scope.
macro_rules! kernel_job {
    ($name:ident<$($lt:lifetime),*> { $($field:ident: $ty:ty),* $(,)? } -> $out:ty = $body:expr) => {
        struct $name<$($lt),*> {
            $($field: $ty),*
        }

        impl<$($lt),*> Kernel for $name<$($lt),*> {
            type Out = $out;

            #[inline(always)]
            fn run<const FMA: bool>(self) -> $out {
                let $name { $($field),* } = self;
                $body
            }
        }
    };
}
pub(super) use kernel_job;

kernel_job!(ForwardJob<'a, 'b, 'o, 'r> {
    problem: &'a Problem<'b>,
    job: Job,
    out: &'o mut [&'r mut [MaybeUninit<f32>]],
} -> (Vec<f64>, u32) = forward_job::<FMA>(problem, job, out));

kernel_job!(BackwardJob<'a, 'b, 'g, 'o, 'r> {
    problem: &'a Problem<'b>,
    grad: &'g [f32],
    job: Job,
    out: &'o mut [&'r mut [f32]],
    stored: bool,
} -> () = backward_job::<FMA>(problem, grad, job, out, stored));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, std) = (exp::<false>(x), x.exp());
            let fused = exp::<true>(x);
            worst = worst.max(((fused - std) / std).abs());
            worst = worst.max(((ours - std) / std).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp::<false>(0.0), 1.0);
        assert!(exp::<false>(-1000.0) < 1e-37 && exp::<false>(-1000.0) >= 0.0);
        assert!(exp::<false>(1000.0).is_finite());
    }

    #[test]
    fn label_range() {
        let l = [0i64, -1, 3];
        assert!(
            !labels_in_range(Labels::I64(&l), 4, None),
            "-1 without ignore_index"
        );
        assert!(labels_in_range(Labels::I64(&[0, 3, 1]), 4, None));
        assert!(!labels_in_range(Labels::I32(&[0, 4]), 4, None));
        assert!(labels_in_range(Labels::I32(&[0, 255]), 4, Some(255)));
        assert!(!labels_in_range(Labels::I32(&[0, 254]), 4, Some(255)));
        assert!(all_finite(&[0.0, -1e30, 3.0]));
        assert!(!all_finite(&[0.0, f32::NAN]) && !all_finite(&[f32::NEG_INFINITY]));
    }

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
        let sums = forward(&problem(
            &x,
            Target::Indices(Labels::I64(&labels)),
            None,
            Activation::None,
        ))
        .sums;
        // I: class 0 gets p0[1] = 0.6; class 1 gets p1[0] + p1[2] = 0.8 + 0.5.
        let expected = [0.6, 1.3, 1.3, 1.7, 1.0, 2.0];
        for (a, b) in sums.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{sums:?}");
        }
        // The ignored middle pixel counts nowhere.
        let valid = [1.0, 0.0, 1.0];
        let sums = forward(&problem(
            &x,
            Target::Indices(Labels::I32(&[1, 0, 1])),
            Some(&valid),
            Activation::None,
        ))
        .sums;
        let expected = [0.0, 1.3, 0.7, 1.3, 0.0, 2.0];
        for (a, b) in sums.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{sums:?}");
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_numbers() {
        // 2 samples, 3 classes, 1000 pixels: full blocks and a partial one.
        let (batch, classes, pixels) = (2, 3, 1000);
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 4.0;
        let x: Vec<f32> = (0..batch * classes * pixels)
            .map(|i| wave(i, 0.37))
            .collect();
        let dense: Vec<f32> = (0..x.len())
            .map(|i| (wave(i, 0.11) > 0.0) as u8 as f32)
            .collect();
        let labels: Vec<i32> = (0..batch * pixels).map(|i| (i * 7 % 3) as i32).collect();
        let valid: Vec<f32> = (0..batch * pixels)
            .map(|i| (i % 5 != 0) as u8 as f32)
            .collect();
        let grad: Vec<f32> = (0..3 * batch * classes).map(|i| wave(i, 1.3)).collect();
        for activation in [Activation::Sigmoid, Activation::Softmax] {
            for (target, valid) in [
                (Target::Dense(&dense), None),
                (Target::Indices(Labels::I32(&labels)), Some(&valid[..])),
            ] {
                let problem = Problem {
                    x: &x,
                    target,
                    valid,
                    batch,
                    classes,
                    pixels,
                    activation,
                    terms: Terms::Squared,
                };
                let run = |isa| {
                    let (sums, mut probs) = forward_storing_on(isa, &problem);
                    assert_eq!(sums, forward_on(isa, &problem, None));
                    let mut dx = vec![0.0; x.len()];
                    backward_on(isa, &problem, &grad, &mut dx, false);
                    backward_on(isa, &problem, &grad, &mut probs, true);
                    (sums, dx, probs)
                };
                let (sums, dx, from_probs) = run(Isa::Baseline);
                assert!(sums.valid_data);
                for isa in Isa::available() {
                    let (s, d, p) = run(isa);
                    let close = |a: &[f32], b: &[f32], tol: f32| {
                        a.iter()
                            .zip(b)
                            .all(|(a, b)| (a - b).abs() <= tol * (1.0 + b.abs()))
                    };
                    assert!(
                        close(&s.sums, &sums.sums, 1e-5),
                        "{isa:?} {activation:?} sums"
                    );
                    assert!(close(&d, &dx, 1e-5), "{isa:?} {activation:?} gradient");
                    assert!(
                        close(&p, &from_probs, 1e-5),
                        "{isa:?} {activation:?} stored"
                    );
                    assert!(
                        close(&p, &dx, 1e-5),
                        "{isa:?} {activation:?} stored vs recomputed"
                    );
                }
            }
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
        let (fused, mut stored) = forward_storing(&problem);
        assert_eq!(fused, forward(&problem));
        for (a, b) in fused.sums.iter().zip(&sums) {
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{a} vs {b}"
            );
        }
        let recomputed = backward(&problem, &grad);
        backward_stored(&problem, &grad, &mut stored);
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
            forward(&problem(x, target, None, Activation::Softmax)).valid_data
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
                        let sums = forward(&Problem { x, ..p }).sums;
                        sums.iter()
                            .zip(&grad)
                            .map(|(s, g)| (s * g) as f64)
                            .sum::<f64>()
                    };
                    let dx = backward(&p, &grad);
                    // The same gradient from the probabilities stored by the forward pass.
                    let (with_probs, mut stored) = forward_storing(&p);
                    assert_eq!(with_probs, forward(&p));
                    backward_stored(&Problem { x: &[], ..p }, &grad, &mut stored);
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
