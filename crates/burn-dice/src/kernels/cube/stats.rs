//! The per-(sample, class) statistics on the GPU: one pass forward, one pass backward.
//!
//! Forward, for every sample `b` and class `c`, over the pixels (weight `w`, 0/1):
//! `I = Σ (p·w)·(t·w)`, `P = Σ p·w` (`Σ (p·w)²` with `squared_pred`), `T = Σ t·w` (`Σ (t·w)²`);
//! with `soft_label` ([`Terms::SoftL1`]) `I = Σ (|pw| + |tw| − |pw − tw|)/2` (in the exact form
//! of [`Terms::soft_intersection`]), `P = Σ |pw|`, `T = Σ |tw|`; and, when asked, the data checks on what it reads (non-finite input and dense target values,
//! the range of the class indices).
//!
//! Backward, from the gradient `g = ∂L/∂[I, P, T]` (`[3, batch, class]`):
//! `∂L/∂p_c = g_I·t·w² + g_P·w·(2·p·w if squared_pred, else 1)` (`T` does not depend on `x`);
//! with `soft_label`, `g_I·w·(sgn pw − sgn(pw − tw))/2 + g_P·w·sgn pw` ([`Terms::d_soft`]),
//! then through the activation: sigmoid `p(1 − p)·∂L/∂p`, softmax `p_c (∂L/∂p_c − Σ_k p_k ∂L/∂p_k)`.
//! The probabilities are recomputed from `x`: a GPU has the arithmetic to spare, and it saves
//! writing and reading a buffer of the input's size.

// Comptime and run-time conditions stay in separate `if`s: the CubeCL macro expands the first
// at compile time and the second into a branch.
#![allow(clippy::collapsible_if)]

use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::CubeDim;

use super::common::*;
use crate::kernels::input::Terms;

/// The options of one statistics problem (comptime in the kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StatsSpec {
    /// [`ACT_NONE`], [`ACT_SIGMOID`] or [`ACT_SOFTMAX`].
    pub activation: u32,
    /// The per-pixel terms of the sums.
    pub terms: Terms,
}

/// Per cube: its partial sums of each class and, with `check`, its partial verdict, laid out
/// as [`Partials`] says (`width` = classes, `stats` = 3). The classes are taken `group` at a
/// time (`groups` groups).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
// `(0.0..=1.0).contains` is not a CubeCL expression: the comparisons stay written out.
#[allow(clippy::manual_range_contains)]
fn stats_forward_kernel<F: Float, I: Numeric>(
    x: &Tensor<F>,
    dense: &Tensor<F>,
    labels: &Tensor<I>,
    valid: &Tensor<F>,
    partial: &mut Tensor<f32>,
    classes: usize,
    pixels: usize,
    per_thread: usize,
    #[comptime] spec: StatsSpec,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] check: bool,
    #[comptime] classes_at_once: Groups,
    #[comptime] planes: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let group = classes_at_once.size;
    let groups = classes_at_once.count;
    let batch = CUBE_COUNT_Y as usize;
    let b = CUBE_POS_Y as usize;
    let tile = CUBE_POS_X as usize;
    let tiles = CUBE_COUNT_X as usize;
    let tid = UNIT_POS_X as usize;
    let start = tile * per_thread * CUBE;
    let mut shared = SharedMemory::<f32>::new(comptime![reduce_shared(3 * group.max(2))]);
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
        let mut acc = Array::<f32>::new(comptime![3 * group]);
        #[unroll]
        for v in 0..comptime![3 * group] {
            acc[v] = 0.0f32;
        }
        for j in 0..per_thread {
            let n = start + j * CUBE + tid;
            if n < pixels {
                let row0 = b * classes * pixels + n;
                let w = weight::<F>(valid, b, n, pixels, has_valid);
                let l = label::<I>(labels, b, n, pixels, is_dense);
                if comptime![check && !is_dense && gi == 0] {
                    if l > verdict[2] {
                        verdict[2] = l;
                    }
                    if -l > verdict[3] {
                        verdict[3] = -l;
                    }
                }
                let norm = softmax_norm::<F>(x, row0, pixels, classes, spec.activation);
                #[unroll]
                for g in 0..group {
                    let c = comptime![g0 + g];
                    if c < classes {
                        let at = row0 + c * pixels;
                        let v = f32::cast_from(x[at]);
                        let t = target_at::<F>(dense, at, l, c, is_dense);
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
                        let pw = activate(v, norm, spec.activation) * w;
                        let tw = t * w;
                        if comptime![spec.terms == Terms::SoftL1] {
                            acc[3 * g] += soft_intersection(pw, tw);
                            acc[3 * g + 1] += pw.abs();
                            acc[3 * g + 2] += tw.abs();
                        } else if comptime![spec.terms == Terms::Squared] {
                            acc[3 * g] += pw * tw;
                            acc[3 * g + 1] += pw * pw;
                            acc[3 * g + 2] += tw * tw;
                        } else {
                            acc[3 * g] += pw * tw;
                            acc[3 * g + 1] += pw;
                            acc[3 * g + 2] += tw;
                        }
                    }
                }
            }
        }
        cube_reduce(
            &mut shared,
            &acc,
            comptime![3 * group],
            comptime![3 * group],
            planes,
        );
        if tid < comptime![3 * group] {
            let c = g0 + tid / 3;
            if c < classes {
                partial[((b * classes + c) * 3 + tid % 3) * tiles + tile] = shared[tid * STRIDE];
            }
        }
        sync_cube();
    }
    if check {
        cube_reduce(&mut shared, &verdict, VERDICT, 2usize, planes);
        if tid < VERDICT {
            let verdicts = batch * classes * 3 * tiles;
            partial[verdicts + tid * batch * tiles + b * tiles + tile] = shared[tid * STRIDE];
        }
    }
}

/// `∂L/∂x` of `L(I, P, T)` from `grad` = `∂L/∂[I, P, T]` (`[3, batch, class]`): one thread per
/// pixel, every class.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn stats_backward_kernel<F: Float, I: Numeric>(
    x: &Tensor<F>,
    dense: &Tensor<F>,
    labels: &Tensor<I>,
    valid: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    batch: usize,
    classes: usize,
    pixels: usize,
    #[comptime] spec: StatsSpec,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * pixels {
        terminate!();
    }
    let b = pos / pixels;
    let n = pos % pixels;
    let row0 = b * classes * pixels + n;
    let w = weight::<F>(valid, b, n, pixels, has_valid);
    let l = label::<I>(labels, b, n, pixels, is_dense);
    let norm = softmax_norm::<F>(x, row0, pixels, classes, spec.activation);
    // `r = Σ_k p_k ∂L/∂p_k` for the softmax, refined once: `refine = Σ_k p_k (∂L/∂p_k − r)`
    // (exactly 0 up to 1e-14 where every `∂L/∂p_k` is equal; see the CPU kernel's
    // `backward_job`).
    let mut r = 0.0f32;
    let mut refine = 0.0f32;
    if comptime![spec.activation == ACT_SOFTMAX] {
        for c in 0..classes {
            let at = row0 + c * pixels;
            let p = activate(f32::cast_from(x[at]), norm, spec.activation);
            let t = target_at::<F>(dense, at, l, c, is_dense);
            r += p * d_prob::<F>(grad, p, t, w, b * classes + c, batch * classes, spec);
        }
        for c in 0..classes {
            let at = row0 + c * pixels;
            let p = activate(f32::cast_from(x[at]), norm, spec.activation);
            let t = target_at::<F>(dense, at, l, c, is_dense);
            refine += p * (d_prob::<F>(grad, p, t, w, b * classes + c, batch * classes, spec) - r);
        }
    }
    for c in 0..classes {
        let at = row0 + c * pixels;
        let p = activate(f32::cast_from(x[at]), norm, spec.activation);
        let t = target_at::<F>(dense, at, l, c, is_dense);
        let dp = d_prob::<F>(grad, p, t, w, b * classes + c, batch * classes, spec);
        let mut out = dp;
        if comptime![spec.activation == ACT_SIGMOID] {
            out = dp * p * (1.0f32 - p);
        }
        if comptime![spec.activation == ACT_SOFTMAX] {
            out = p * ((dp - r) - refine);
        }
        dx[at] = F::cast_from(out);
    }
}

/// `∂L/∂p` of one element: `g_I·t·w² + g_P·w·(2pw or 1)` (with `soft_label`:
/// `g_I·w·(sgn pw − sgn(pw − tw))/2 + g_P·w·sgn pw`), with `bc` = `b·classes + c` and
/// `stride` = `batch·classes` (the distance between the rows of `grad`).
#[cube]
fn d_prob<F: Float>(
    grad: &Tensor<F>,
    p: f32,
    t: f32,
    w: f32,
    bc: usize,
    stride: usize,
    #[comptime] spec: StatsSpec,
) -> f32 {
    let g_i = f32::cast_from(grad[bc]);
    let g_p = f32::cast_from(grad[stride + bc]);
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

/// The `[3, batch, class]` sums of `data` and, with `check`, the `[4]` verdict (see
/// [`crate::kernels::input::Verdict::Device`]), both in the input's element type.
pub(crate) fn forward<R: CubeRuntime>(
    data: &Data<R>,
    spec: StatsSpec,
    check: bool,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let [batch, classes, pixels] = data.dims();
    let tiling = Tiling::new(batch, pixels);
    let partials = Partials {
        batch,
        tiles: tiling.tiles,
        width: classes,
        stats: 3,
        check,
    };
    let partial = partials.alloc(&data.x);
    let args = data.args();
    counted();
    stats_forward_kernel::launch::<R>(
        &data.x.client,
        tiling.cube_count(batch),
        CubeDim::new_1d(CUBE as u32),
        args.x,
        args.dense,
        args.labels,
        args.valid,
        partial.clone().into_tensor_arg(),
        classes,
        pixels,
        tiling.per_thread,
        spec,
        data.dense.is_some(),
        data.valid.is_some(),
        check,
        class_groups(classes),
        use_planes(&data.x.client),
        args.dtypes,
    );
    partials.finish(&data.x, partial, vec![3, batch, classes])
}

/// The input's gradient for `grad` (`[3, batch, class]`, contiguous).
pub(crate) fn backward<R: CubeRuntime>(
    data: &Data<R>,
    grad: CubeTensor<R>,
    spec: StatsSpec,
) -> CubeTensor<R> {
    let [batch, classes, pixels] = data.dims();
    let dx = empty_like(&data.x, vec![batch, classes, pixels], data.x.dtype);
    let (count, dim) = elementwise(&data.x.client, batch * pixels);
    let args = data.args();
    counted();
    stats_backward_kernel::launch::<R>(
        &data.x.client,
        count,
        dim,
        args.x,
        args.dense,
        args.labels,
        args.valid,
        grad.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        batch,
        classes,
        pixels,
        spec,
        data.dense.is_some(),
        data.valid.is_some(),
        args.dtypes,
    );
    dx
}
