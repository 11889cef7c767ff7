//! The focal term of `DiceFocalLoss` on the GPU (Lin et al., ICCV 2017, as MONAI's sigmoid
//! `FocalLoss`): per (sample, class) the sum over the pixels of `v · loss`, one pass forward,
//! one pass backward with the closed-form gradient.
//!
//! Per element, with `t` the per-channel target (one-hot for class indices), `v` the validity
//! weight, `s = 2t − 1`, `z = −s·x`, `ls = ln σ` (the formulas of `cpu/kernel/focal.rs`):
//! `bce = x − x·t − ls(x)`, `m = e^(γ·ls(z))` (`(1 − p_t)^γ`), `a = α·t + (1 − α)(1 − t)` (or 1),
//! `loss = a·m·bce`, and `∂loss/∂x = a·m·(σ(x) − t − γ·s·σ(−z)·bce)`.

use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::CubeDim;

use super::common::*;

/// The options of the focal term (run-time values in the kernels).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FocalSpec {
    /// `γ`.
    pub gamma: f32,
    /// `α`, or no weighting.
    pub alpha: Option<f32>,
}

/// The terms `(a·m, bce)` of one element: `loss = a·m·bce`.
#[derive(CubeType, Clone, Copy)]
struct Terms {
    am: f32,
    bce: f32,
}

#[cube]
fn terms(x: f32, t: f32, gamma: f32, alpha: f32, #[comptime] has_alpha: bool) -> Terms {
    let bce = x - x * t - log_sigmoid(x);
    let m = (gamma * log_sigmoid(-(2.0f32 * t - 1.0f32) * x)).exp();
    let mut a = 1.0f32;
    if has_alpha {
        a = alpha * t + (1.0f32 - alpha) * (1.0f32 - t);
    }
    Terms { am: a * m, bce }
}

/// Per cube, the partial sums of each class, laid out as [`Partials`] says (`width` = classes,
/// `stats` = 1).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn focal_forward_kernel<F: Float, I: Numeric>(
    x: &Tensor<F>,
    dense: &Tensor<F>,
    labels: &Tensor<I>,
    valid: &Tensor<F>,
    partial: &mut Tensor<f32>,
    classes: usize,
    pixels: usize,
    per_thread: usize,
    gamma: f32,
    alpha: f32,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] has_alpha: bool,
    #[comptime] classes_at_once: Groups,
    #[comptime] planes: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let group = classes_at_once.size;
    let groups = classes_at_once.count;
    let b = CUBE_POS_Y as usize;
    let tile = CUBE_POS_X as usize;
    let tiles = CUBE_COUNT_X as usize;
    let tid = UNIT_POS_X as usize;
    let start = tile * per_thread * CUBE;
    let mut shared = SharedMemory::<f32>::new(comptime![reduce_shared(group)]);
    #[unroll]
    for gi in 0..groups {
        let g0 = comptime![gi * group];
        let mut acc = Array::<f32>::new(group);
        #[unroll]
        for g in 0..group {
            acc[g] = 0.0f32;
        }
        for j in 0..per_thread {
            let n = start + j * CUBE + tid;
            if n < pixels {
                let row0 = b * classes * pixels + n;
                let w = weight::<F>(valid, b, n, pixels, has_valid);
                let l = label::<I>(labels, b, n, pixels, is_dense);
                #[unroll]
                for g in 0..group {
                    let c = comptime![g0 + g];
                    if c < classes {
                        let at = row0 + c * pixels;
                        let t = target_at::<F>(dense, at, l, c, is_dense);
                        let e = terms(f32::cast_from(x[at]), t, gamma, alpha, has_alpha);
                        acc[g] += e.am * e.bce * w;
                    }
                }
            }
        }
        cube_reduce(&mut shared, &acc, group, group, planes);
        if tid < group {
            let c = g0 + tid;
            if c < classes {
                partial[(b * classes + c) * tiles + tile] = shared[tid * STRIDE];
            }
        }
        sync_cube();
    }
}

/// `∂(Σ_{b,c} grad[b, c]·Σ_pixels v·loss)/∂x`: one thread per element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn focal_backward_kernel<F: Float, I: Numeric>(
    x: &Tensor<F>,
    dense: &Tensor<F>,
    labels: &Tensor<I>,
    valid: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    batch: usize,
    classes: usize,
    pixels: usize,
    gamma: f32,
    alpha: f32,
    #[comptime] is_dense: bool,
    #[comptime] has_valid: bool,
    #[comptime] has_alpha: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let at = ABSOLUTE_POS;
    if at >= batch * classes * pixels {
        terminate!();
    }
    let n = at % pixels;
    let bc = at / pixels;
    let b = bc / classes;
    let c = bc % classes;
    let w = weight::<F>(valid, b, n, pixels, has_valid);
    let l = label::<I>(labels, b, n, pixels, is_dense);
    let t = target_at::<F>(dense, at, l, c, is_dense);
    let xv = f32::cast_from(x[at]);
    let e = terms(xv, t, gamma, alpha, has_alpha);
    let s = 2.0f32 * t - 1.0f32;
    let sigma_x = 1.0f32 / (1.0f32 + (-xv).exp());
    let sigma_minus_z = 1.0f32 / (1.0f32 + (-s * xv).exp());
    let d = e.am * (sigma_x - t - gamma * s * sigma_minus_z * e.bce);
    dx[at] = F::cast_from(f32::cast_from(grad[bc]) * w * d);
}

/// The `[batch, class]` focal sums of `data`, in the input's element type.
pub(crate) fn forward<R: CubeRuntime>(data: &Data<R>, spec: FocalSpec) -> CubeTensor<R> {
    let [batch, classes, pixels] = data.dims();
    let tiling = Tiling::new(batch, pixels);
    let partials = Partials {
        batch,
        tiles: tiling.tiles,
        width: classes,
        stats: 1,
        check: false,
    };
    let partial = partials.alloc(&data.x);
    let args = data.args();
    counted();
    focal_forward_kernel::launch::<R>(
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
        spec.gamma,
        spec.alpha.unwrap_or(0.0),
        data.dense.is_some(),
        data.valid.is_some(),
        spec.alpha.is_some(),
        class_groups(classes),
        use_planes(&data.x.client),
        args.dtypes,
    );
    partials.finish(&data.x, partial, vec![batch, classes]).0
}

/// The input's gradient for `grad` (`[batch, class]`, contiguous).
pub(crate) fn backward<R: CubeRuntime>(
    data: &Data<R>,
    grad: CubeTensor<R>,
    spec: FocalSpec,
) -> CubeTensor<R> {
    let [batch, classes, pixels] = data.dims();
    let dx = empty_like(&data.x, vec![batch, classes, pixels], data.x.dtype);
    let (count, dim) = elementwise(&data.x.client, batch * classes * pixels);
    let args = data.args();
    counted();
    focal_backward_kernel::launch::<R>(
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
        spec.gamma,
        spec.alpha.unwrap_or(0.0),
        data.dense.is_some(),
        data.valid.is_some(),
        spec.alpha.is_some(),
        args.dtypes,
    );
    dx
}
