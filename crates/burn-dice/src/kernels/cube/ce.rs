//! The cross-entropy term of `DiceCELoss` on the GPU: one pass forward (per sample, the sums of
//! the pixel losses and of their weights), one pass backward with the closed-form gradient.
//!
//! Per pixel, with `w` the class weights (ones without `ce_weight`), `ε` the label smoothing,
//! `C` the class count, `v` the validity weight and `log p = x − lse`, `lse = max + ln Σ_c
//! e^(x_c − max)` (the formulas of `cpu/kernel/ce.rs`):
//! - class indices `y`: `loss = −v·((1 − ε)·w_y·log p_y + ε/C · Σ_c w_c log p_c)`,
//!   `norm = v·w_y`; `∂loss/∂x_k = v·((1 − ε)·w_y·(p_k − [y = k]) + ε/C·(p_k Σ_c w_c − w_k))`;
//! - dense targets: `t' = (1 − ε)·t + ε/C`, `loss = −v·Σ_c w_c t'_c log p_c`, `norm = v`;
//!   `∂loss/∂x_k = v·(p_k Σ_c w_c t'_c − w_k t'_k)`;
//! - one channel (binary cross-entropy with logits, `π` the positive weight):
//!   `loss = −v·(π·t·ln σ(x) + (1 − t)·ln σ(−x))`, `norm = v`;
//!   `∂loss/∂x = v·(σ(x)·(π·t + 1 − t) − π·t)`.

use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::CubeDim;

use super::common::*;

/// The options of the cross-entropy term (run-time values in the kernels).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CeSpec {
    /// `π`, the weight of the positive term of the single-channel case.
    pub pos_weight: f32,
    /// `ε`.
    pub label_smoothing: f32,
}

/// The weight of class `c` (1 without class weights).
#[cube]
fn class_weight<F: Float>(weights: &Tensor<F>, c: usize, #[comptime] has_weight: bool) -> f32 {
    let mut w = 1.0f32;
    if has_weight {
        w = f32::cast_from(weights[c]);
    }
    w
}

/// `ln Σ_c e^(x_c)` of the pixel whose class-0 logit is at `row0`.
#[cube]
fn log_sum_exp<F: Float>(x: &Tensor<F>, row0: usize, pixels: usize, classes: usize) -> f32 {
    let norm = softmax_norm::<F>(x, row0, pixels, classes, ACT_SOFTMAX);
    norm.max - norm.inv_sum.ln()
}

/// Per cube, the partial sums (loss, norm), laid out as [`Partials`] says (`width` = 1,
/// `stats` = 2).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_forward_kernel<F: Float, I: Numeric>(
    x: &Tensor<F>,
    dense: &Tensor<F>,
    labels: &Tensor<I>,
    valid: &Tensor<F>,
    weights: &Tensor<F>,
    partial: &mut Tensor<f32>,
    classes: usize,
    pixels: usize,
    per_thread: usize,
    pos_weight: f32,
    eps: f32,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] has_weight: bool,
    #[comptime] planes: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let b = CUBE_POS_Y as usize;
    let tile = CUBE_POS_X as usize;
    let tiles = CUBE_COUNT_X as usize;
    let tid = UNIT_POS_X as usize;
    let start = tile * per_thread * CUBE;
    let smooth = eps / f32::cast_from(classes as u32);
    let mut loss_sum = 0.0f32;
    let mut norm_sum = 0.0f32;
    for j in 0..per_thread {
        let n = start + j * CUBE + tid;
        if n < pixels {
            let row0 = b * classes * pixels + n;
            let v = weight::<F>(valid, b, n, pixels, has_valid);
            let mut norm = v;
            let loss = if classes == 1 {
                let xv = f32::cast_from(x[row0]);
                let t = f32::cast_from(dense[row0]);
                -(pos_weight * t * log_sigmoid(xv) + (1.0f32 - t) * log_sigmoid(-xv))
            } else {
                let lse = log_sum_exp::<F>(x, row0, pixels, classes);
                let l = label::<I>(labels, b, n, pixels, is_dense);
                let mut picked = 0.0f32;
                let mut w_y = 0.0f32;
                let mut all = 0.0f32;
                for c in 0..classes {
                    let at = row0 + c * pixels;
                    let logp = f32::cast_from(x[at]) - lse;
                    let wc = class_weight::<F>(weights, c, has_weight);
                    if comptime![is_dense] {
                        let ts = f32::cast_from(dense[at]) * (1.0f32 - eps) + smooth;
                        all += wc * ts * logp;
                    } else {
                        let hit = one_hot(l, c);
                        picked += hit * wc * logp;
                        w_y += hit * wc;
                        all += wc * logp;
                    }
                }
                if comptime![!is_dense] {
                    norm = v * w_y;
                }
                if comptime![is_dense] {
                    -all
                } else {
                    -((1.0f32 - eps) * picked + smooth * all)
                }
            };
            loss_sum += loss * v;
            norm_sum += norm;
        }
    }
    let mut shared = SharedMemory::<f32>::new(comptime![reduce_shared(2)]);
    let mut sums = Array::<f32>::new(2usize);
    sums[0] = loss_sum;
    sums[1] = norm_sum;
    cube_reduce(&mut shared, &sums, 2usize, 2usize, planes);
    if tid < 2 {
        partial[(b * 2 + tid) * tiles + tile] = shared[tid * STRIDE];
    }
}

/// `∂(Σ_b grad[b]·loss_b)/∂x`: one thread per pixel, every class.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_backward_kernel<F: Float, I: Numeric>(
    x: &Tensor<F>,
    dense: &Tensor<F>,
    labels: &Tensor<I>,
    valid: &Tensor<F>,
    weights: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    batch: usize,
    classes: usize,
    pixels: usize,
    pos_weight: f32,
    eps: f32,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] has_weight: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * pixels {
        terminate!();
    }
    let b = pos / pixels;
    let n = pos % pixels;
    let row0 = b * classes * pixels + n;
    let g = f32::cast_from(grad[b]) * weight::<F>(valid, b, n, pixels, has_valid);
    if classes == 1 {
        let xv = f32::cast_from(x[row0]);
        let t = f32::cast_from(dense[row0]);
        let sigma = 1.0f32 / (1.0f32 + (-xv).exp());
        dx[row0] = F::cast_from(g * (sigma * (pos_weight * t + 1.0f32 - t) - pos_weight * t));
    } else {
        let norm = softmax_norm::<F>(x, row0, pixels, classes, ACT_SOFTMAX);
        let l = label::<I>(labels, b, n, pixels, is_dense);
        let smooth = eps / f32::cast_from(classes as u32);
        // Σ_c w_c t'_c (dense), or w_y and Σ_c w_c (class indices).
        let mut total = 0.0f32;
        let mut w_y = 0.0f32;
        for c in 0..classes {
            let wc = class_weight::<F>(weights, c, has_weight);
            if comptime![is_dense] {
                total += wc * (f32::cast_from(dense[row0 + c * pixels]) * (1.0f32 - eps) + smooth);
            } else {
                total += wc;
                w_y += one_hot(l, c) * wc;
            }
        }
        for c in 0..classes {
            let at = row0 + c * pixels;
            let p = activate(f32::cast_from(x[at]), norm, ACT_SOFTMAX);
            let wc = class_weight::<F>(weights, c, has_weight);
            let d = if comptime![is_dense] {
                let ts = f32::cast_from(dense[at]) * (1.0f32 - eps) + smooth;
                p * total - wc * ts
            } else {
                let hit = one_hot(l, c);
                (1.0f32 - eps) * w_y * (p - hit) + smooth * (p * total - wc)
            };
            dx[at] = F::cast_from(g * d);
        }
    }
}

/// The per-sample `[2, batch]` sums (loss, norm) of `data`, in the input's element type.
pub(crate) fn forward<R: CubeRuntime>(
    data: &Data<R>,
    weights: Option<CubeTensor<R>>,
    spec: CeSpec,
) -> CubeTensor<R> {
    let [batch, classes, pixels] = data.dims();
    let tiling = Tiling::new(batch, pixels);
    let partials = Partials {
        batch,
        tiles: tiling.tiles,
        width: 1,
        stats: 2,
        check: false,
    };
    let partial = partials.alloc(&data.x);
    let args = data.args();
    let has_weight = weights.is_some();
    let weights = weights.unwrap_or_else(|| data.x.clone());
    counted();
    ce_forward_kernel::launch::<R>(
        &data.x.client,
        tiling.cube_count(batch),
        CubeDim::new_1d(CUBE as u32),
        args.x,
        args.dense,
        args.labels,
        args.valid,
        weights.into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        classes,
        pixels,
        tiling.per_thread,
        spec.pos_weight,
        spec.label_smoothing,
        data.dense.is_some(),
        data.valid.is_some(),
        has_weight,
        use_planes(&data.x.client),
        args.dtypes,
    );
    partials.finish(&data.x, partial, vec![2, batch]).0
}

/// The input's gradient for `grad` (`[2, batch]`: only the loss row depends on the input).
pub(crate) fn backward<R: CubeRuntime>(
    data: &Data<R>,
    weights: Option<CubeTensor<R>>,
    grad: CubeTensor<R>,
    spec: CeSpec,
) -> CubeTensor<R> {
    let [batch, classes, pixels] = data.dims();
    let dx = empty_like(&data.x, vec![batch, classes, pixels], data.x.dtype);
    let (count, dim) = elementwise(&data.x.client, batch * pixels);
    let args = data.args();
    let has_weight = weights.is_some();
    let weights = weights.unwrap_or_else(|| data.x.clone());
    counted();
    ce_backward_kernel::launch::<R>(
        &data.x.client,
        count,
        dim,
        args.x,
        args.dense,
        args.labels,
        args.valid,
        weights.into_tensor_arg(),
        grad.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        batch,
        classes,
        pixels,
        spec.pos_weight,
        spec.label_smoothing,
        data.dense.is_some(),
        data.valid.is_some(),
        has_weight,
        args.dtypes,
    );
    dx
}
