//! The per-(sample, class) statistics on the GPU, and the per-pixel term summed beside them
//! (`DiceCELoss`'s cross-entropy, `ce.rs`; `DiceFocalLoss`'s focal term, `focal.rs`): one pass
//! forward, one pass backward, whatever the loss.
//!
//! Forward, for every sample `b` and class `c`, over the pixels (weight `w`, 0/1):
//! `I = Σ (p·w)·(t·w)`, `P = Σ p·w` (`Σ (p·w)²` with `squared_pred`), `T = Σ t·w` (`Σ (t·w)²`);
//! with `soft_label` ([`Terms::SoftL1`]) `I = Σ (|pw| + |tw| − |pw − tw|)/2` (in the exact form
//! of [`Terms::soft_intersection`]), `P = Σ |pw|`, `T = Σ |tw|`; the [`ExtraTerm`]'s sums
//! (cross-entropy: `Σ w·ℓ_c` and `Σ w·norm_c`; focal: `Σ w·loss`) as more rows of the same
//! output; and, when asked, the data checks on what it reads (non-finite input and dense target
//! values, the range of the class indices).
//!
//! Backward, from the gradient `g` of that output (`[rows, batch, class]`):
//! `∂L/∂p_c = g_I·t·w² + g_P·w·(2·p·w if squared_pred, else 1)` (`T` does not depend on `x`);
//! with `soft_label`, `g_I·w·(sgn pw − sgn(pw − tw))/2 + g_P·w·sgn pw` ([`Terms::d_soft`]),
//! then through the activation: sigmoid `p(1 − p)·∂L/∂p`, softmax `p_c (∂L/∂p_c − Σ_k p_k ∂L/∂p_k)`;
//! plus the extra term's own `∂/∂x` (its formulas in `ce.rs`, `focal.rs`). So the input's
//! gradient is written once, by one launch. The probabilities are recomputed from `x`: a GPU
//! has the arithmetic to spare, and it saves writing and reading a buffer of the input's size.

// Comptime and run-time conditions stay in separate `if`s: the CubeCL macro expands the first
// at compile time and the second into a branch.
#![allow(clippy::collapsible_if)]

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::CubeDim;

use super::common::*;
use super::{ce, focal};
use crate::kernels::input::Terms;

/// The cross-entropy's `lse` of each lane of the pixels whose class-0 logits are the vector at
/// `row0` (0 unless the extra term is the multi-class cross-entropy): from the activation's
/// normalizers `norms` when the activation is the softmax, else computed here.
#[cube]
fn ce_log_sum_exp<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    row0: usize,
    vectors: usize,
    #[comptime] classes: usize,
    norms: &Norms<N>,
    #[comptime] spec: StatsSpec,
    #[comptime] single: bool,
) -> Vector<f32, N> {
    let mut lse = Vector::<f32, N>::new(0.0f32);
    if comptime![spec.extra.is_ce() && !single] {
        if comptime![spec.activation == ACT_SOFTMAX] {
            lse = ce::log_sum_exp::<N>(norms);
        } else {
            let own = softmax_norms::<F, N>(x, row0, vectors, classes, ACT_SOFTMAX);
            lse = ce::log_sum_exp::<N>(&own);
        }
    }
    lse
}

/// Per cube: its partial sums of each class and, with `check`, its partial verdict, laid out
/// as [`Partials`] says (`width` = classes, `stats` = the rows of `spec.extra`). The classes
/// are taken `classes_at_once.size` at a time; `single`: the input has one channel.
///
/// The pixels are read `N` at a time ([`Data::lanes`]): a thread's step is one vector of each
/// class (`vectors` = pixels / `N` per class row), the math runs per lane on `f32`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
// `(0.0..=1.0).contains` is not a CubeCL expression: the comparisons stay written out.
#[allow(clippy::manual_range_contains)]
fn stats_forward_kernel<F: Float, I: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    dense: &Tensor<Vector<F, N>>,
    labels: &Tensor<Vector<I, N>>,
    valid: &Tensor<Vector<F, N>>,
    weights: &Tensor<F>,
    partial: &mut Tensor<f32>,
    #[comptime] classes: usize,
    vectors: usize,
    per_thread: usize,
    pos_weight: f32,
    label_smoothing: f32,
    gamma: f32,
    alpha: f32,
    #[comptime] spec: StatsSpec,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] check: bool,
    #[comptime] single: bool,
    #[comptime] classes_at_once: Groups,
    #[comptime] planes: bool,
    #[comptime] cube: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let group = classes_at_once.size;
    let groups = classes_at_once.count;
    let rows = comptime![spec.extra.rows()];
    let lanes = x.vector_size();
    let batch = CUBE_COUNT_Y as usize;
    let b = CUBE_POS_Y as usize;
    let tile = CUBE_POS_X as usize;
    let tiles = CUBE_COUNT_X as usize;
    let tid = UNIT_POS_X as usize;
    let start = tile * per_thread * cube;
    let eps = label_smoothing;
    let smooth = eps / comptime![classes as f32];
    let mut shared =
        Shared::<[f32]>::new_slice(comptime![reduce_shared((rows * group).max(VERDICT), cube)]);
    // The data checks (the slots of `VERDICT`): non-finite input values, dense target values
    // that are not in [0, 1] (NaN and infinities included), the largest class index and the
    // negated smallest one.
    let mut verdict = Array::<f32>::new(VERDICT);
    #[unroll]
    for k in 0..VERDICT {
        verdict[k] = 0.0f32;
    }
    #[unroll]
    for gi in 0..groups {
        let g0 = comptime![gi * group];
        let mut acc = Array::<f32>::new(comptime![rows * group]);
        #[unroll]
        for v in 0..comptime![rows * group] {
            acc[v] = 0.0f32;
        }
        for j in 0..per_thread {
            let n = start + j * cube + tid;
            if n < vectors {
                let row0 = b * classes * vectors + n;
                let wv = weights_of::<F, N>(valid, b * vectors + n, has_valid);
                let lv = labels_of::<I, N>(labels, b * vectors + n, is_dense);
                if comptime![check && !is_dense && gi == 0] {
                    #[unroll]
                    for lane in 0..lanes {
                        let l = lv.extract(lane);
                        if l > verdict[2] {
                            verdict[2] = l;
                        }
                        if -l > verdict[3] {
                            verdict[3] = -l;
                        }
                    }
                }
                let norms = softmax_norms::<F, N>(x, row0, vectors, classes, spec.activation);
                let lse = ce_log_sum_exp::<F, N>(x, row0, vectors, classes, &norms, spec, single);
                #[unroll]
                for g in 0..group {
                    let c = comptime![g0 + g];
                    let k = comptime![rows * g];
                    if c < classes {
                        let at = row0 + c * vectors;
                        let xv = Vector::<f32, N>::cast_from(x[at]);
                        let tv = dense_of::<F, N>(dense, at, is_dense);
                        let w_c = ce::class_weight::<F>(
                            weights,
                            c,
                            comptime![spec.extra.has_class_weight()],
                        );
                        #[unroll]
                        for lane in 0..lanes {
                            let v = xv.extract(lane);
                            let w = wv.extract(lane);
                            let t = target::<N>(tv, lv, lane, c, is_dense);
                            if check {
                                if v.is_nan() || v.is_inf() {
                                    verdict[0] += 1.0f32;
                                }
                                if comptime![is_dense] {
                                    // NaN fails both comparisons: test it apart.
                                    if t.is_nan() || t < 0.0f32 || t > 1.0f32 {
                                        verdict[1] += 1.0f32;
                                    }
                                }
                            }
                            let norm = lane_norm::<N>(&norms, lane);
                            let pw = activate(v, norm, spec.activation) * w;
                            let tw = t * w;
                            if comptime![spec.terms == Terms::SoftL1] {
                                acc[k] += soft_intersection(pw, tw);
                                acc[k + 1] += pw.abs();
                                acc[k + 2] += tw.abs();
                            } else if comptime![spec.terms == Terms::Squared] {
                                acc[k] += pw * tw;
                                acc[k + 1] += pw * pw;
                                acc[k + 2] += tw * tw;
                            } else {
                                acc[k] += pw * tw;
                                acc[k + 1] += pw;
                                acc[k + 2] += tw;
                            }
                            if comptime![spec.extra.is_ce() && single] {
                                acc[k + 3] += ce::binary(v, t, pos_weight) * w;
                                acc[k + 4] += w;
                            }
                            if comptime![spec.extra.is_ce() && !single] {
                                let ts = ce::smoothed(t, eps, smooth);
                                acc[k + 3] += ce::term(v, lse.extract(lane), ts, w_c) * w;
                                // norm = v·w_y (class indices), v (dense: counted once, at
                                // class 0).
                                if comptime![!is_dense] {
                                    acc[k + 4] += w_c * t * w;
                                } else if comptime![c == 0] {
                                    acc[k + 4] += w;
                                }
                            }
                            if comptime![spec.extra.is_focal()] {
                                let has_alpha = comptime![spec.extra.has_alpha()];
                                acc[k + 3] += focal::loss(v, t, gamma, alpha, has_alpha) * w;
                            }
                        }
                    }
                }
            }
        }
        cube_reduce(
            &mut shared,
            &acc,
            comptime![rows * group],
            comptime![rows * group],
            planes,
            cube,
        );
        if tid < comptime![rows * group] {
            let c = g0 + tid / rows;
            if c < classes {
                partial[((b * classes + c) * rows + tid % rows) * tiles + tile] =
                    shared[tid * comptime![stride(cube)]];
            }
        }
        sync_cube();
    }
    if check {
        cube_reduce(&mut shared, &verdict, VERDICT, 2usize, planes, cube);
        if tid < VERDICT {
            let verdicts = batch * classes * rows * tiles;
            partial[verdicts + tid * batch * tiles + b * tiles + tile] =
                shared[tid * comptime![stride(cube)]];
        }
    }
}

/// `∂L/∂x` from `grad` = `∂L/∂` the forward's output (`[rows, batch, class]`): one thread per
/// vector of `N` pixels ([`Data::lanes`]; `vectors` = pixels / `N` per class row), every
/// class.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn stats_backward_kernel<F: Float, I: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    dense: &Tensor<Vector<F, N>>,
    labels: &Tensor<Vector<I, N>>,
    valid: &Tensor<Vector<F, N>>,
    weights: &Tensor<F>,
    grad: &Tensor<f32>,
    dx: &mut Tensor<Vector<F, N>>,
    batch: usize,
    #[comptime] classes: usize,
    vectors: usize,
    pos_weight: f32,
    label_smoothing: f32,
    gamma: f32,
    alpha: f32,
    #[comptime] spec: StatsSpec,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] single: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * vectors {
        terminate!();
    }
    let lanes = x.vector_size();
    let b = pos / vectors;
    let n = pos % vectors;
    let row0 = b * classes * vectors + n;
    // The distance between two rows of `grad`; row 3 is the extra term's loss.
    let stride = batch * classes;
    let wv = weights_of::<F, N>(valid, b * vectors + n, has_valid);
    let lv = labels_of::<I, N>(labels, b * vectors + n, is_dense);
    let norms = softmax_norms::<F, N>(x, row0, vectors, classes, spec.activation);
    let lse = ce_log_sum_exp::<F, N>(x, row0, vectors, classes, &norms, spec, single);
    let eps = label_smoothing;
    let smooth = eps / comptime![classes as f32];
    let has_weight = comptime![spec.extra.has_class_weight()];
    // Per lane, `r = Σ_k p_k ∂L/∂p_k` for the softmax, refined once:
    // `refine = Σ_k p_k (∂L/∂p_k − r)` (exactly 0 up to 1e-14 where every `∂L/∂p_k` is equal;
    // see the CPU kernel's `backward_job`).
    let mut r = Vector::<f32, N>::new(0.0f32);
    let mut refine = Vector::<f32, N>::new(0.0f32);
    if comptime![spec.activation == ACT_SOFTMAX] {
        let zero = Vector::<f32, N>::new(0.0f32);
        let pixel = (row0, vectors, b * classes, stride);
        r = softmax_dot::<F, N>(
            x, dense, grad, lv, wv, &norms, zero, pixel, classes, spec, is_dense,
        );
        refine = softmax_dot::<F, N>(
            x, dense, grad, lv, wv, &norms, r, pixel, classes, spec, is_dense,
        );
    }
    // The cross-entropy's softmax couples the classes: `total = Σ_c g_c w_c t'_c` per lane.
    let mut total = Vector::<f32, N>::new(0.0f32);
    if comptime![spec.extra.is_ce() && !single] {
        #[unroll(classes <= UNROLL_CLASSES)]
        for c in 0..classes {
            let tv = dense_of::<F, N>(dense, row0 + c * vectors, is_dense);
            let g = grad[3 * stride + b * classes + c];
            let gw = g * ce::class_weight::<F>(weights, c, has_weight);
            #[unroll]
            for lane in 0..lanes {
                let t = target::<N>(tv, lv, lane, c, is_dense);
                total.insert(
                    lane,
                    total.extract(lane) + gw * ce::smoothed(t, eps, smooth),
                );
            }
        }
    }
    #[unroll(classes <= UNROLL_CLASSES)]
    for c in 0..classes {
        let at = row0 + c * vectors;
        let xv = Vector::<f32, N>::cast_from(x[at]);
        let tv = dense_of::<F, N>(dense, at, is_dense);
        let (g_i, g_p) = (grad[b * classes + c], grad[stride + b * classes + c]);
        // The term's loss is summed with the pixel's weight `w`: its row of `grad`.
        let mut g = 0.0f32;
        if comptime![spec.extra.rows() > 3] {
            g = grad[3 * stride + b * classes + c];
        }
        let w_c = ce::class_weight::<F>(weights, c, has_weight);
        let mut out = Vector::<F, N>::empty();
        #[unroll]
        for lane in 0..lanes {
            let v = xv.extract(lane);
            let w = wv.extract(lane);
            let p = activate(v, lane_norm::<N>(&norms, lane), spec.activation);
            let t = target::<N>(tv, lv, lane, c, is_dense);
            let dp = d_prob(g_i, g_p, p, t, w, spec);
            let mut o = dp;
            if comptime![spec.activation == ACT_SIGMOID] {
                o = dp * p * (1.0f32 - p);
            }
            if comptime![spec.activation == ACT_SOFTMAX] {
                o = p * ((dp - r.extract(lane)) - refine.extract(lane));
            }
            if comptime![spec.extra.is_ce() && single] {
                o += w * g * ce::d_binary(v, t, pos_weight);
            }
            if comptime![spec.extra.is_ce() && !single] {
                // The cross-entropy's softmax: the activation's when it is the softmax.
                let mut q = p;
                if comptime![spec.activation != ACT_SOFTMAX] {
                    q = (v - lse.extract(lane)).exp();
                }
                let ts = ce::smoothed(t, eps, smooth);
                o += w * ce::d_term(q, g, w_c, ts, total.extract(lane));
            }
            if comptime![spec.extra.is_focal()] {
                let has_alpha = comptime![spec.extra.has_alpha()];
                o += w * g * focal::d_loss(v, t, gamma, alpha, has_alpha);
            }
            out.insert(lane, F::cast_from(o));
        }
        dx[at] = out;
    }
}

/// Per lane, `Σ_c p_c (∂L/∂p_c − shift)` over the classes of the pixels whose class indices
/// are `lv`, weights `wv`, normalizers `norms`: with `shift` 0 the softmax backward's
/// `r = Σ_k p_k ∂L/∂p_k`, with `shift` = `r` its refinement. `pixel`: the vector of class 0
/// (`row0`), the vectors of a class row, `b · classes`, the distance between the rows of
/// `grad`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn softmax_dot<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    dense: &Tensor<Vector<F, N>>,
    grad: &Tensor<f32>,
    lv: Vector<f32, N>,
    wv: Vector<f32, N>,
    norms: &Norms<N>,
    shift: Vector<f32, N>,
    pixel: (usize, usize, usize, usize),
    #[comptime] classes: usize,
    #[comptime] spec: StatsSpec,
    #[comptime] is_dense: bool,
) -> Vector<f32, N> {
    let (row0, vectors, bc0, stride) = pixel;
    let mut dot = Vector::<f32, N>::new(0.0f32);
    #[unroll(classes <= UNROLL_CLASSES)]
    for c in 0..classes {
        let at = row0 + c * vectors;
        let xv = Vector::<f32, N>::cast_from(x[at]);
        let tv = dense_of::<F, N>(dense, at, is_dense);
        let (g_i, g_p) = (grad[bc0 + c], grad[stride + bc0 + c]);
        #[unroll]
        for lane in 0..x.vector_size() {
            let p = activate(
                xv.extract(lane),
                lane_norm::<N>(norms, lane),
                spec.activation,
            );
            let t = target::<N>(tv, lv, lane, c, is_dense);
            let dp = d_prob(g_i, g_p, p, t, wv.extract(lane), spec);
            dot.insert(lane, dot.extract(lane) + p * (dp - shift.extract(lane)));
        }
    }
    dot
}

/// `∂L/∂p` of one element: `g_I·t·w² + g_P·w·(2pw or 1)` (with `soft_label`:
/// `g_I·w·(sgn pw − sgn(pw − tw))/2 + g_P·w·sgn pw`), with `g_I`, `g_P` the gradients of its
/// (sample, class)'s `I` and `P`.
#[cube]
fn d_prob(g_i: f32, g_p: f32, p: f32, t: f32, w: f32, #[comptime] spec: StatsSpec) -> f32 {
    // (∂I/∂p, ∂P/∂p), as `Terms::d_soft` and the CPU kernel's `pixel_grads`.
    let mut d_i = t * w * w;
    let mut d_p = w;
    if comptime![spec.terms == Terms::Squared] {
        d_p = 2.0f32 * p * w * w;
    }
    if comptime![spec.terms == Terms::SoftL1] {
        let pw = p * w;
        let s_p = sgn(pw);
        d_i = w * (s_p - sgn(pw - t * w)) * 0.5f32;
        d_p = w * s_p;
    }
    g_i * d_i + g_p * d_p
}

/// `(|p| + |t| − |p − t|) / 2` as `p·m_p + t·m_t`, exact: see [`Terms::soft_intersection`].
#[cube]
fn soft_intersection(p: f32, t: f32) -> f32 {
    let s = sgn(p - t);
    p * ((sgn(p) - s) * 0.5f32) + t * ((sgn(t) + s) * 0.5f32)
}

/// `sgn v` with `sgn 0 = 0` (and `sgn NaN = 0`), as [`crate::kernels::input::sgn`].
#[cube]
fn sgn(v: f32) -> f32 {
    let mut s = 0.0f32;
    if v > 0.0f32 {
        s = 1.0f32;
    }
    if v < 0.0f32 {
        s = -1.0f32;
    }
    s
}

/// The `[rows, batch, class]` sums of `data` (`rows` = `spec.extra.rows()`: `I`, `P`, `T`,
/// then the extra term's) and, with `check`, the `[4]` verdict (see
/// [`crate::kernels::input::Verdict::Device`]), both in `f32` (see `Partials::finish`); `weights`:
/// the cross-entropy's class weights. Two launches.
#[allow(unsafe_code)]
pub(crate) fn forward(
    data: &Data,
    weights: Option<CubeTensor>,
    spec: StatsSpec,
    values: TermValues,
    check: bool,
) -> (CubeTensor, Option<CubeTensor>) {
    let [batch, classes, pixels] = data.dims();
    let rows = spec.extra.rows();
    let cube = client_cube(&data.x.client);
    let lanes = data.lanes();
    let vectors = pixels / lanes;
    let tiling = Tiling::new(batch, vectors, cube);
    let partials = Partials {
        batch,
        tiles: tiling.tiles,
        width: classes,
        stats: rows,
        check,
    };
    let partial = partials.alloc(&data.x);
    let args = data.args();
    let weights = weights.unwrap_or_else(|| data.x.clone());
    counted();
    // SAFETY: no access is out of bounds, and every loop ends (`per_thread` iterations):
    // - `x`, `dense` (`[batch, class, pixels]`, contiguous, `Data`), `labels`, `valid`
    //   (`[batch, pixels]`) are read in vectors of `lanes` values (`lanes` divides `pixels`,
    //   `lanes_for`, so a class row is `vectors` whole vectors) at vector `n < vectors` of
    //   sample `b < batch` (the cube count's y is `batch`) and class `c < classes`, each under
    //   its own `if`; `dense`,
    //   `labels`, `valid`, `weights` (bound to `x` when absent) only where the comptime flags
    //   say the tensor was given; `weights` (`[class]`) at `c < classes`;
    // - `partial` is `Partials::values` = `batch · tiles · (classes · rows + 4 if check)` values,
    //   the cube count's x is `tiling.tiles`, and each cube writes its tile's slot of
    //   `(b, c < classes, row < rows)` and, with `check`, of `(slot < 4, b)`;
    // - `shared` holds `reduce_shared(max(rows · group, 4), cube)` values, and `cube_reduce`
    //   touches `v · stride(cube) + i` with `v < count ≤ max(rows · group, 4)` and `i < cube`:
    //   the cube has `cube` threads (`CubeDim` below), and a plane's slot
    //   `tid / PLANE_DIM < cube`; its last step gives each of the `count ≤ 40` values a thread
    //   (`cube_size` is at least 64).
    unsafe {
        stats_forward_kernel::launch_unchecked(
            &data.x.client,
            cube_count(&tiling, batch),
            CubeDim::new_1d(cube as u32),
            lanes,
            args.x,
            args.dense,
            args.labels,
            args.valid,
            weights.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            classes,
            vectors,
            tiling.per_thread,
            values.pos_weight,
            values.label_smoothing,
            values.gamma,
            values.alpha,
            spec,
            data.dense.is_some(),
            data.valid.is_some(),
            check,
            data.single_channel(),
            class_groups(
                classes,
                rows,
                data.x.client.properties().hardware.max_shared_memory_size,
                cube,
            ),
            use_planes(&data.x.client, cube),
            cube,
            args.dtypes,
        );
    }
    partials.finish(&data.x, partial, vec![rows, batch, classes])
}

/// The input's gradient (in the input's element type) for `grad` (`[rows, batch, class]`,
/// contiguous, `f32` as the forward's output): one launch.
#[allow(unsafe_code)]
pub(crate) fn backward(
    data: &Data,
    weights: Option<CubeTensor>,
    grad: CubeTensor,
    spec: StatsSpec,
    values: TermValues,
) -> CubeTensor {
    let [batch, classes, pixels] = data.dims();
    let dx = empty_like(&data.x, vec![batch, classes, pixels], data.x.dtype);
    let lanes = data.lanes();
    let vectors = pixels / lanes;
    let (count, dim) = elementwise(&data.x.client, batch * vectors);
    let args = data.args();
    let weights = weights.unwrap_or_else(|| data.x.clone());
    counted();
    // SAFETY: every thread past `batch · vectors` leaves first; the others read `x`, `dense`
    // (contiguous `[batch, class, pixels]`), `labels`, `valid` (`[batch, pixels]`) and write
    // `dx` (`[batch, class, pixels]`) in vectors of `lanes` values (`lanes` divides `pixels`,
    // `lanes_for`) at their vector of each class `c < classes`, read `grad`
    // (contiguous `[rows, batch, class]`) at `(row < rows, b, c)` (rows 3 and 4 only where the
    // comptime extra term has them), and `weights` (`[class]`) at `c` only with class weights;
    // the absent tensors are bound to `x` and never read (comptime flags). The loops run over
    // `classes`.
    unsafe {
        stats_backward_kernel::launch_unchecked(
            &data.x.client,
            count,
            dim,
            lanes,
            args.x,
            args.dense,
            args.labels,
            args.valid,
            weights.into_tensor_arg(),
            grad.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            batch,
            classes,
            vectors,
            values.pos_weight,
            values.label_smoothing,
            values.gamma,
            values.alpha,
            spec,
            data.dense.is_some(),
            data.valid.is_some(),
            data.single_channel(),
            args.dtypes,
        );
    }
    dx
}
