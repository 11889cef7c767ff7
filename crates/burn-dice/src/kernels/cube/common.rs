//! What the CubeCL kernel families share: the layout, the activation of one value, the target
//! of one (class, pixel), the cube-wide reduction of per-thread partial sums, the kernel that
//! adds the partial sums of the cubes up, and the launch geometry.
//!
//! Layout (as on the CPU): `x` is `[batch, class, pixels]` row-major; a dense target has the
//! same layout; class indices and the validity weights are `[batch, pixels]`. The reductions
//! give each cube a tile of consecutive pixels of one sample (every class): its threads walk
//! the tile in steps of [`CUBE`] pixels (adjacent threads, adjacent addresses), accumulate in
//! `f32` registers, then the cube adds its threads' sums in shared memory and writes one
//! partial sum per (cube, class, statistic); a second small kernel ([`sum_tiles_kernel`]) adds
//! the cubes' partial sums up. No atomics, so nothing is serialized, and the result does not
//! depend on scheduling. `f16`/`bf16` inputs are read as `f32`, accumulated in `f32`, and the
//! results written back in the input's type.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

/// Threads per cube.
pub(super) const CUBE: usize = 256;
/// The reductions aim at about this many cubes in all (enough to fill a large GPU several
/// times over), with at least one pixel per thread.
const TARGET_CUBES: usize = 1024;
/// Classes whose sums a thread keeps in registers at once; more classes are taken in groups of
/// this many (the softmax normalizer is then recomputed per group, from cache).
pub(super) const CLASS_GROUP: usize = 8;

/// The activation, as a comptime code.
pub(super) const ACT_NONE: u32 = 0;
/// See [`ACT_NONE`].
pub(super) const ACT_SIGMOID: u32 = 1;
/// See [`ACT_NONE`].
pub(super) const ACT_SOFTMAX: u32 = 2;

/// The softmax normalizer of one pixel: the largest logit and `1 / Σ_c e^(x_c − max)`.
#[derive(CubeType, Clone, Copy)]
pub(super) struct Norm {
    pub max: f32,
    pub inv_sum: f32,
}

/// The normalizer of the pixel whose class-0 logit is at `row0` (classes `pixels` apart); a
/// neutral one (max 0, 1/sum 1) unless `activation` is softmax.
#[cube]
pub(super) fn softmax_norm<F: Float>(
    x: &Tensor<F>,
    row0: usize,
    pixels: usize,
    classes: usize,
    #[comptime] activation: u32,
) -> Norm {
    let mut norm = Norm {
        max: 0.0f32,
        inv_sum: 1.0f32,
    };
    if comptime![activation == ACT_SOFTMAX] {
        let mut max = f32::cast_from(x[row0]);
        for c in 1..classes {
            let v = f32::cast_from(x[row0 + c * pixels]);
            if v > max {
                max = v;
            }
        }
        let mut sum = 0.0f32;
        for c in 0..classes {
            sum += (f32::cast_from(x[row0 + c * pixels]) - max).exp();
        }
        norm.max = max;
        norm.inv_sum = 1.0f32 / sum;
    }
    norm
}

/// The probability of logit `v` under `activation` (softmax: with the pixel's `norm`).
#[cube]
pub(super) fn activate(v: f32, norm: Norm, #[comptime] activation: u32) -> f32 {
    let mut p = v;
    if comptime![activation == ACT_SIGMOID] {
        p = 1.0f32 / (1.0f32 + (-v).exp());
    }
    if comptime![activation == ACT_SOFTMAX] {
        p = (v - norm.max).exp() * norm.inv_sum;
    }
    p
}

/// `ln σ(v) = min(v, 0) − ln(1 + e^−|v|)`, stable for any finite `v`.
#[cube]
pub(super) fn log_sigmoid(v: f32) -> f32 {
    let mut neg = v;
    if v > 0.0f32 {
        neg = -v;
    }
    let mut low = v;
    if v > 0.0f32 {
        low = 0.0f32;
    }
    low - (1.0f32 + neg.exp()).ln()
}

/// `1` where the class index `label` is `c`, else `0`.
#[cube]
pub(super) fn one_hot(label: f32, c: usize) -> f32 {
    let mut t = 0.0f32;
    if label == f32::cast_from(c as u32) {
        t = 1.0f32;
    }
    t
}

/// Adds up, over the threads of the cube, the `count` values each thread holds in `values`;
/// the sum of value `v` ends in `shared[v * CUBE]` (`shared` holds `count · CUBE` values).
/// Every thread of the cube must call it.
///
/// After one barrier, thread `v` adds the values of every thread serially. A tree would need
/// `log2(CUBE)` barriers; the serial sum costs under a microsecond per cube on a GPU, and
/// barriers cost far more than additions on devices that emulate them (Mesa's lavapipe: 18×
/// faster than the tree there). Plane (warp) operations are not used: cubecl-wgpu offers them
/// only on some adapters, and a path that the CI's lavapipe cannot run would go untested.
#[cube]
pub(super) fn cube_sum(
    shared: &mut SharedMemory<f32>,
    values: &Array<f32>,
    #[comptime] count: usize,
) {
    let tid = UNIT_POS_X as usize;
    #[unroll]
    for v in 0..count {
        shared[v * CUBE + tid] = values[v];
    }
    sync_cube();
    if tid < count {
        let mut acc = 0.0f32;
        for i in 0..CUBE {
            acc += shared[tid * CUBE + i];
        }
        shared[tid * CUBE] = acc;
    }
    sync_cube();
}

/// `out[s, b, m] = Σ_tiles partial[b, tile, m, s]`: the sums of the cubes of each sample, for
/// `partial` of shape `[batch, tiles, width, stats]`, written in the input's type.
#[cube(launch)]
pub(super) fn sum_tiles_kernel<F: Float>(
    partial: &Tensor<f32>,
    out: &mut Tensor<F>,
    batch: usize,
    tiles: usize,
    width: usize,
    stats: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= stats * batch * width {
        terminate!();
    }
    let s = pos / (batch * width);
    let rest = pos % (batch * width);
    let b = rest / width;
    let m = rest % width;
    let mut acc = 0.0f32;
    for t in 0..tiles {
        acc += partial[((b * tiles + t) * width + m) * stats + s];
    }
    out[pos] = F::cast_from(acc);
}

/// The verdict of the data checks from the cubes' `[count, 4]` partial verdicts: non-finite
/// input values (sum), non-finite target values (sum), the largest and the smallest class
/// index (max, min).
#[cube(launch)]
pub(super) fn verdict_kernel<F: Float>(
    partial: &Tensor<f32>,
    out: &mut Tensor<F>,
    count: usize,
    #[define(F)] _dtype: StorageType,
) {
    let k = UNIT_POS_X as usize;
    if k >= 4 {
        terminate!();
    }
    let mut acc = partial[k];
    for i in 1..count {
        acc = merge_verdict(k, acc, partial[i * 4 + k]);
    }
    out[k] = F::cast_from(acc);
}

/// Slot `k` of two partial verdicts merged: the two counts (`k` 0, 1) add, then the largest
/// (`k` 2) and the smallest (`k` 3) class index.
#[cube]
pub(super) fn merge_verdict(k: usize, acc: f32, v: f32) -> f32 {
    let mut out = acc;
    if k < 2 {
        out += v;
    } else if k == 2 {
        if v > acc {
            out = v;
        }
    } else if v < acc {
        out = v;
    }
    out
}

/// The classes a thread keeps in registers at once (`size`), and the number of such groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Groups {
    pub size: usize,
    pub count: usize,
}

/// The [`Groups`] of `classes` classes.
pub(super) fn class_groups(classes: usize) -> Groups {
    let size = classes.clamp(1, CLASS_GROUP);
    Groups {
        size,
        count: classes.div_ceil(size),
    }
}

/// How a reduction kernel covers `[batch, pixels]`: `tiles` cubes per sample, each thread
/// walking `per_thread` pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiling {
    pub tiles: usize,
    pub per_thread: usize,
}

impl Tiling {
    pub fn new(batch: usize, pixels: usize) -> Self {
        assert!(
            batch <= u16::MAX as usize,
            "burn-dice GPU kernels: a batch of {batch} samples is more than one launch covers \
             ({})",
            u16::MAX
        );
        let mut per_thread = (batch * pixels).div_ceil(CUBE * TARGET_CUBES).max(1);
        // A launch dimension holds at most 65,535 cubes.
        per_thread = per_thread.max(pixels.div_ceil(CUBE * u16::MAX as usize));
        let tiles = pixels.div_ceil(CUBE * per_thread);
        Tiling { tiles, per_thread }
    }

    pub fn cube_count(&self, batch: usize) -> CubeCount {
        CubeCount::Static(self.tiles as u32, batch as u32, 1)
    }
}

/// One thread per element of `count`.
pub(super) fn elementwise<R: CubeRuntime>(
    client: &ComputeClient<R>,
    count: usize,
) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(CUBE as u32);
    (calculate_cube_count_elemwise(client, count, dim), dim)
}

/// A new contiguous tensor of `shape` and `dtype` on the device of `like`.
pub(super) fn empty_like<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: Vec<usize>,
    dtype: DType,
) -> CubeTensor<R> {
    empty_device_contiguous_dtype::<R>(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// The sums `[stats, batch, width]` (laid out so, of shape `shape`) in the type of `like` from
/// `partial` (`[batch, tiles, width, stats]`).
pub(super) fn sum_tiles<R: CubeRuntime>(
    like: &CubeTensor<R>,
    partial: CubeTensor<R>,
    (batch, tiles, width, stats): (usize, usize, usize, usize),
    shape: Vec<usize>,
) -> CubeTensor<R> {
    debug_assert_eq!(shape.iter().product::<usize>(), stats * batch * width);
    let out = empty_like(like, shape, like.dtype);
    let (count, dim) = elementwise(&like.client, stats * batch * width);
    sum_tiles_kernel::launch::<R>(
        &like.client,
        count,
        dim,
        partial.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        batch,
        tiles,
        width,
        stats,
        like.dtype.into(),
    );
    out
}

/// The `[4]` verdict in the type of `like` from the `[count, 4]` partial verdicts.
pub(super) fn verdict<R: CubeRuntime>(
    like: &CubeTensor<R>,
    partial: CubeTensor<R>,
    count: usize,
) -> CubeTensor<R> {
    let out = empty_like(like, vec![4], like.dtype);
    verdict_kernel::launch::<R>(
        &like.client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(4),
        partial.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        count,
        like.dtype.into(),
    );
    out
}

/// One problem's tensors on the device, contiguous: the input `[batch, class, pixels]`, a
/// dense target of the same shape or class indices `[batch, 1, pixels]`, and the validity
/// weights `[batch, 1, pixels]`.
#[derive(Debug, Clone)]
pub(super) struct Data<R: CubeRuntime> {
    pub x: CubeTensor<R>,
    pub dense: Option<CubeTensor<R>>,
    pub labels: Option<CubeTensor<R>>,
    pub valid: Option<CubeTensor<R>>,
}

/// The kernel arguments of a [`Data`]: an absent tensor is replaced by the input, which the
/// kernel then never reads (its comptime flags say so).
pub(super) struct DataArgs<R: CubeRuntime> {
    pub x: TensorArg<R>,
    pub dense: TensorArg<R>,
    pub labels: TensorArg<R>,
    pub valid: TensorArg<R>,
    /// The element types: input (and dense target, weights), class indices.
    pub dtypes: [StorageType; 2],
}

impl<R: CubeRuntime> Data<R> {
    /// `[batch, class, pixels]`.
    pub fn dims(&self) -> [usize; 3] {
        let s = self.x.meta.shape();
        [s[0], s[1], s[2]]
    }

    pub fn args(&self) -> DataArgs<R> {
        let or_x = |t: &Option<CubeTensor<R>>| t.as_ref().unwrap_or(&self.x).clone();
        let labels = or_x(&self.labels);
        DataArgs {
            dtypes: [self.x.dtype.into(), labels.dtype.into()],
            x: self.x.clone().into_tensor_arg(),
            dense: or_x(&self.dense).into_tensor_arg(),
            labels: labels.into_tensor_arg(),
            valid: or_x(&self.valid).into_tensor_arg(),
        }
    }
}

/// The weight of pixel `n` of sample `b` (1 without weights).
#[cube]
pub(super) fn weight<F: Float>(
    valid: &Tensor<F>,
    b: usize,
    n: usize,
    pixels: usize,
    #[comptime] has_valid: bool,
) -> f32 {
    let mut w = 1.0f32;
    if has_valid {
        w = f32::cast_from(valid[b * pixels + n]);
    }
    w
}

/// The class index of pixel `n` of sample `b`, as `f32` (0 for a dense target).
#[cube]
pub(super) fn label<I: Numeric>(
    labels: &Tensor<I>,
    b: usize,
    n: usize,
    pixels: usize,
    #[comptime] dense: bool,
) -> f32 {
    let mut l = 0.0f32;
    if !dense {
        l = f32::cast_from(labels[b * pixels + n]);
    }
    l
}

/// The target of the class whose element is at `at` (dense), or of class `c` for the class
/// index `label`.
#[cube]
pub(super) fn target_at<F: Float>(
    dense: &Tensor<F>,
    at: usize,
    label: f32,
    c: usize,
    #[comptime] is_dense: bool,
) -> f32 {
    if is_dense {
        f32::cast_from(dense[at])
    } else {
        one_hot(label, c)
    }
}
