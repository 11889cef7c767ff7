//! What the CubeCL kernel families share: the layout, the activation of one value, the target
//! of one (class, pixel), the cube-wide reduction, the second stage of every reduction, the
//! launch geometry and the launch count.
//!
//! Layout (as on the CPU): `x` is `[batch, class, pixels]` row-major; a dense target has the
//! same layout; class indices and the validity weights are `[batch, pixels]`. Every tensor
//! of pixels is read in vectors of `N` adjacent pixels ([`lanes_for`]: 4 `f32` values, 128
//! bits, where `pixels` allows it), as burn's element-wise kernels read theirs; the math then
//! runs per lane, in `f32`. The reductions run in two launches:
//! 1. each cube takes a tile of consecutive pixels of one sample (every class): its threads
//!    walk the tile in steps of a cube's width ([`cube_size`]) of vectors (adjacent threads,
//!    adjacent addresses),
//!    accumulate in `f32` registers, then [`cube_reduce`] combines the threads' values (plane
//!    operations where the device has them, else a shared-memory tree) and the cube writes one
//!    partial result per (class, statistic), and with the data checks its partial verdict, into
//!    one buffer ([`Partials`]);
//! 2. [`sum_tiles_kernel`] gives each output value a cube that reads that value's partial
//!    results (contiguous) in parallel and reduces them the same way; the verdict's four slots
//!    are four more cubes of the same launch.
//!
//! No atomics, so nothing is serialized, and the result does not depend on scheduling (the
//! order of the additions is fixed for a device and plane size). `f16`/`bf16` inputs are read
//! as `f32`, accumulated in `f32`, and the results written back in the input's type.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::features::Plane;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

// The launch plan (cube size, tiling, class groups, the partial results' layout, vector
// widths) and the kernels' comptime spec are the core's, shared with the other release line.
pub(super) use burn_dice_core::gpu::*;

/// The softmax normalizer of one pixel: the largest logit and `1 / Σ_c e^(x_c − max)`.
#[derive(CubeType, Clone, Copy)]
pub(super) struct Norm {
    pub max: f32,
    pub inv_sum: f32,
}

/// The softmax normalizers of a vector of `N` adjacent pixels (one per lane), whose class-0
/// logits are the vector at `row0` (classes `vectors` apart); neutral ones (max 0, 1/sum 1)
/// unless `activation` is softmax.
#[derive(CubeType, Clone, Copy)]
pub(super) struct Norms<N: Size> {
    pub max: Vector<f32, N>,
    pub inv_sum: Vector<f32, N>,
}

/// The [`Norms`] of the pixels whose class-0 logits are the vector at `row0` (classes `vectors`
/// apart).
///
/// One pass over the classes (the online softmax of Milakov & Gimelshein, "Online normalizer
/// calculation for softmax", 2018): per lane, the running largest logit `m` and
/// `s = Σ e^(x_c − m)` over the classes seen so far, `s` rescaled by `e^(m − x_c)` when `x_c`
/// is the new largest. One exponential per class and each logit read once (one vector load
/// per class), where the two-pass form (the largest first, then the sum) reads every logit
/// twice.
#[cube]
pub(super) fn softmax_norms<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    row0: usize,
    vectors: usize,
    #[comptime] classes: usize,
    #[comptime] activation: u32,
) -> Norms<N> {
    let mut max = Vector::<f32, N>::new(0.0f32);
    let mut inv_sum = Vector::<f32, N>::new(1.0f32);
    if comptime![activation == ACT_SOFTMAX] {
        max = Vector::<f32, N>::cast_from(x[row0]);
        let mut sum = Vector::<f32, N>::new(1.0f32);
        #[unroll(classes <= UNROLL_CLASSES)]
        for c in 1..classes {
            let v = Vector::<f32, N>::cast_from(x[row0 + c * vectors]);
            #[unroll]
            for lane in 0..x.vector_size() {
                let (m, s, vl) = (max[lane], sum[lane], v[lane]);
                if vl > m {
                    sum[lane] = s * (m - vl).exp() + 1.0f32;
                    max[lane] = vl;
                } else {
                    sum[lane] = s + (vl - m).exp();
                }
            }
        }
        inv_sum = Vector::<f32, N>::new(1.0f32) / sum;
    }
    Norms::<N> { max, inv_sum }
}

/// The [`Norm`] of lane `lane` of `norms`.
#[cube]
pub(super) fn lane_norm<N: Size>(norms: &Norms<N>, lane: usize) -> Norm {
    Norm {
        max: norms.max[lane],
        inv_sum: norms.inv_sum[lane],
    }
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

/// [`cube_size`] for `client`'s device (capped by the tests' `CUBE_LIMIT`).
pub(super) fn client_cube<R: CubeRuntime>(client: &ComputeClient<R>) -> usize {
    let max_units = client.properties().hardware.max_units_per_cube;
    #[cfg(test)]
    let max_units = max_units.min(tests::CUBE_LIMIT.get() as u32);
    cube_size(max_units)
}

/// Reduces, over the threads of the cube, the `count` values each thread holds in `values`:
/// values `0..sums` are added, values `sums..count` are taken the largest of. The result for
/// value `v` ends in `shared[v * stride(cube)]` (`shared` holds [`reduce_shared`]`(count, cube)`
/// values). Every thread of the cube (`cube` threads, [`cube_size`]) must call it.
///
/// - `planes` (the client offers plane operations, see [`use_planes`]): each plane (warp)
///   reduces its threads' values with `plane_sum` / `plane_max`, its first thread writes them,
///   and after one barrier thread `v` reduces the `cube / PLANE_DIM` results of value `v`
///   (8 on a 32-wide NVIDIA warp).
/// - otherwise a two-level tree in shared memory: every thread writes its values, then
///   `RADIX · count` threads each reduce `cube / RADIX` values `RADIX` apart (adjacent threads,
///   adjacent addresses; the pad of [`stride`] keeps two values' threads off one bank), then
///   thread `v` reduces the `RADIX` results of value `v`. Three barriers in all: the tree of
///   `log2(cube)` levels that a GPU would run fastest costs 8, which Mesa's lavapipe (the CI's
///   device, which emulates barriers and offers no plane operations) pays for dearly.
#[cube]
pub(super) fn cube_reduce(
    shared: &mut SharedMemory<f32>,
    values: &Array<f32>,
    #[comptime] count: usize,
    #[comptime] sums: usize,
    #[comptime] planes: bool,
    #[comptime] cube: usize,
) {
    let tid = UNIT_POS_X as usize;
    let stride = comptime![stride(cube)];
    if planes {
        let plane = tid / PLANE_DIM as usize;
        #[unroll]
        for v in 0..count {
            let r = if comptime![v < sums] {
                plane_sum(values[v])
            } else {
                plane_max(values[v])
            };
            if UNIT_POS_PLANE == 0 {
                shared[v * stride + plane] = r;
            }
        }
        sync_cube();
        let per_plane = cube / PLANE_DIM as usize;
        if tid < count {
            let base = tid * stride;
            let mut acc = shared[base];
            for i in 1..per_plane {
                acc = combine(acc, shared[base + i], tid < sums);
            }
            shared[base] = acc;
        }
        sync_cube();
    } else {
        #[unroll]
        for v in 0..count {
            shared[v * stride + tid] = values[v];
        }
        sync_cube();
        // Level 1: task `(v, g)` reduces `shared[v·stride + g + RADIX·i]` into its first slot
        // (only it reads those slots, so in place without a barrier).
        let mut task = tid;
        while task < comptime![count * RADIX] {
            let v = task / RADIX;
            let base = v * stride + task % RADIX;
            let mut acc = shared[base];
            #[unroll]
            for i in 1..comptime![cube / RADIX] {
                acc = combine(acc, shared[base + i * RADIX], v < sums);
            }
            shared[base] = acc;
            task += cube;
        }
        sync_cube();
        if tid < count {
            let base = tid * stride;
            let mut acc = shared[base];
            #[unroll]
            for i in 1..RADIX {
                acc = combine(acc, shared[base + i], tid < sums);
            }
            shared[base] = acc;
        }
        sync_cube();
    }
}

/// `a + b` (`sum`), else the larger of the two.
#[cube]
fn combine(a: f32, b: f32, sum: bool) -> f32 {
    let mut out = a + b;
    if !sum {
        out = a;
        if b > a {
            out = b;
        }
    }
    out
}

/// The second stage of every reduction: `out[s, b, m] = Σ_tiles partial[b, m, s, tile]`, the
/// sums of the cubes of each sample in `f32`, for `partial` laid out as
/// `[batch, width, stats, tiles]` (each output's tiles contiguous); with `check`, also the
/// `[4]` verdict from the `[4, batch · tiles]` partial verdicts that follow them in `partial`
/// (see [`VERDICT`]). One cube per output value: its threads read the tiles a cube's width apart
/// (adjacent threads, adjacent addresses) and [`cube_reduce`] adds them up.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn sum_tiles_kernel(
    partial: &Tensor<f32>,
    out: &mut Tensor<f32>,
    verdict: &mut Tensor<f32>,
    batch: usize,
    tiles: usize,
    width: usize,
    stats: usize,
    #[comptime] check: bool,
    #[comptime] planes: bool,
    #[comptime] cube: usize,
) {
    let o = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    let outputs = stats * batch * width;
    let mut total = outputs;
    if check {
        total += 4;
    }
    // Uniform over the cube: a cube past the end leaves as a whole, before any barrier.
    if o >= total {
        terminate!();
    }
    let tid = UNIT_POS_X as usize;
    let mut shared = SharedMemory::<f32>::new(comptime![reduce_shared(1, cube)]);
    let mut acc = Array::<f32>::new(1usize);
    if o < outputs {
        let s = o / (batch * width);
        let b = (o / width) % batch;
        let m = o % width;
        let base = ((b * width + m) * stats + s) * tiles;
        acc[0] = 0.0f32;
        let mut t = tid;
        while t < tiles {
            acc[0] += partial[base + t];
            t += cube;
        }
        cube_reduce(&mut shared, &acc, 1usize, 1usize, planes, cube);
        if tid == 0 {
            out[o] = shared[0];
        }
    } else {
        if check {
            let k = o - outputs;
            let n = batch * tiles;
            let base = outputs * tiles + k * n;
            acc[0] = 0.0f32;
            let mut i = tid;
            while i < n {
                acc[0] = combine(acc[0], partial[base + i], k < 2);
                i += cube;
            }
            // The two counts add up; the largest class index and the negated smallest one are
            // taken the largest of.
            if k < 2 {
                cube_reduce(&mut shared, &acc, 1usize, 1usize, planes, cube);
            } else {
                cube_reduce(&mut shared, &acc, 1usize, 0usize, planes, cube);
            }
            if tid == 0 {
                let mut r = shared[0];
                if k == 3 {
                    r = -r;
                }
                verdict[k] = r;
            }
        }
    }
}

/// The cube count of a reduction's first stage: `tiling.tiles` cubes per sample of `batch`.
pub(super) fn cube_count(tiling: &Tiling, batch: usize) -> CubeCount {
    CubeCount::Static(tiling.tiles as u32, batch as u32, 1)
}

/// One thread per element of `count`, in cubes whose size the client chooses for the device
/// (as burn's element-wise kernels do).
pub(super) fn elementwise<R: CubeRuntime>(
    client: &ComputeClient<R>,
    count: usize,
) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, count);
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

/// The [`Partials`] buffer of a reduction's first stage on the device, and its second stage.
pub(super) trait PartialsOnDevice {
    /// The buffer, uninitialized, on the device of `like`.
    fn alloc<R: CubeRuntime>(&self, like: &CubeTensor<R>) -> CubeTensor<R>;
    /// The second stage (see the implementation).
    fn finish<R: CubeRuntime>(
        &self,
        like: &CubeTensor<R>,
        partial: CubeTensor<R>,
        shape: Vec<usize>,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>);
}

impl PartialsOnDevice for Partials {
    /// The buffer, uninitialized (every value is written by the first stage).
    fn alloc<R: CubeRuntime>(&self, like: &CubeTensor<R>) -> CubeTensor<R> {
        empty_like(like, vec![self.values()], DType::F32)
    }

    /// The second stage: the sums `[stats, batch, width]` (laid out so, of shape `shape`) and,
    /// with `check`, the `[4]` verdict, in `f32` whatever the input's type (a sum of `f16`
    /// values passes 65,504, their largest, at a 256² image), on the device of `like`, from the
    /// first stage's `partial`. One launch.
    #[allow(unsafe_code)]
    fn finish<R: CubeRuntime>(
        &self,
        like: &CubeTensor<R>,
        partial: CubeTensor<R>,
        shape: Vec<usize>,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
        let outputs = self.stats * self.batch * self.width;
        debug_assert_eq!(shape.iter().product::<usize>(), outputs);
        let out = empty_like(like, shape, DType::F32);
        let verdict = self
            .check
            .then(|| empty_like(like, vec![VERDICT], DType::F32));
        // Without the checks the kernel never touches its verdict argument (comptime `check`):
        // it is bound to the output, which the kernel writes anyway.
        let verdict_arg = verdict.as_ref().unwrap_or(&out).clone();
        let cubes = outputs + if self.check { VERDICT } else { 0 };
        let max = u16::MAX as usize;
        let count = CubeCount::Static(cubes.min(max) as u32, cubes.div_ceil(max) as u32, 1);
        counted();
        // SAFETY: a cube past the `cubes` outputs leaves first, as a whole. The others read
        // `partial` (`Partials::values` values) at `((b · width + m) · stats + s) · tiles + t` with
        // `b < batch`, `m < width`, `s < stats`, `t < tiles`, or, with `check`, at
        // `outputs · tiles + k · batch · tiles + i` with `k < 4`, `i < batch · tiles`; they
        // write `out` (`outputs` values) at their output and `verdict` (4 values, only with
        // `check`) at `k`; `shared` (`reduce_shared(1)`) as in the statistics' kernel. The loops
        // step by the cube's width up to `tiles` or `batch · tiles`.
        let cube = client_cube(&like.client);
        unsafe {
            sum_tiles_kernel::launch_unchecked::<R>(
                &like.client,
                count,
                CubeDim::new_1d(cube as u32),
                partial.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                verdict_arg.into_tensor_arg(),
                self.batch,
                self.tiles,
                self.width,
                self.stats,
                self.check,
                use_planes(&like.client, cube),
                cube,
            );
        }
        (out, verdict)
    }
}

static PLANES: AtomicBool = AtomicBool::new(true);

/// Lets the CubeCL kernels reduce with plane (warp, subgroup) operations where the device
/// offers them (`true`, the default), or makes them use their shared-memory tree everywhere
/// (`false`): to compare the two, or to rule the plane path out. Process-wide; kernels already
/// compiled for a setting are kept, so switching back and forth costs nothing after the first
/// time.
///
/// Which devices offer them is the CubeCL runtime's answer (its client's `Plane::Ops`
/// feature): CUDA and HIP, and wgpu on a GPU adapter with subgroups. cubecl-wgpu 0.10 never
/// offers them on a CPU adapter, so Mesa's lavapipe (the CI's device) always takes the tree,
/// though it reports subgroup arithmetic itself.
pub fn set_plane_reductions(enabled: bool) {
    PLANES.store(enabled, Ordering::Relaxed);
}

/// Whether the kernels launched now on `client` reduce with plane operations (see
/// [`set_plane_reductions`]) in cubes of `cube` threads: the client offers them, and `cube` is
/// a whole number of the device's planes of any size it may choose.
pub(super) fn use_planes<R: CubeRuntime>(client: &ComputeClient<R>, cube: usize) -> bool {
    let hardware = &client.properties().hardware;
    let (min, max) = (
        hardware.plane_size_min as usize,
        hardware.plane_size_max as usize,
    );
    PLANES.load(Ordering::Relaxed)
        && client.features().plane.contains(Plane::Ops)
        && min > 0
        && max <= cube
        && cube.is_multiple_of(max)
        && max.is_multiple_of(min)
}

/// Whether the kernels launched now on burn-wgpu's `device` reduce with plane operations (see
/// [`set_plane_reductions`]).
#[cfg(feature = "wgpu")]
pub fn wgpu_plane_reductions(device: &burn_wgpu::WgpuDevice) -> bool {
    let client = <burn_wgpu::WgpuRuntime as cubecl::Runtime>::client(device);
    use_planes(&client, client_cube(&client))
}

/// The kernels launched so far (see [`launches`]).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Counts one kernel launch: every launch of the CubeCL kernels goes through it.
pub(super) fn counted() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// The CubeCL kernels this process has launched so far, on every thread (under burn-fusion a
/// kernel is launched when the fusion stream executes, which may be on another thread than
/// the call's). For tests and benchmarks that hold the number of launches per call: run the
/// call alone, sync the device, and take the difference.
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
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

    /// The lanes of the kernels' vector loads along the pixel axis ([`lanes_for`]): as many
    /// as the client loads at once of the input's type and of the class indices' (its
    /// `io_optimized_vector_sizes`, as burn's element-wise kernels: 4 `f32`/`i32` values,
    /// 128 bits, on lavapipe).
    pub fn lanes(&self) -> usize {
        let client = &self.x.client;
        let widest = |t: &CubeTensor<R>| {
            client
                .io_optimized_vector_sizes(t.dtype.size())
                .next()
                .unwrap_or(1)
        };
        let mut widest_all = widest(&self.x);
        if let Some(labels) = &self.labels {
            widest_all = widest_all.min(widest(labels));
        }
        #[cfg(test)]
        let widest_all = widest_all.min(tests::LANES_LIMIT.get());
        lanes_for(self.dims()[2], widest_all)
    }

    /// One channel (comptime `single` in the kernels): the cross-entropy is the binary one.
    pub fn single_channel(&self) -> bool {
        self.dims()[1] == 1
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

/// The weights of the vector of pixels at `at` of `valid` (`[batch, 1, pixels]`; 1 without
/// weights).
#[cube]
pub(super) fn weights_of<F: Float, N: Size>(
    valid: &Tensor<Vector<F, N>>,
    at: usize,
    #[comptime] has_valid: bool,
) -> Vector<f32, N> {
    let mut w = Vector::<f32, N>::new(1.0f32);
    if has_valid {
        w = Vector::<f32, N>::cast_from(valid[at]);
    }
    w
}

/// The class indices of the vector of pixels at `at` of `labels` (`[batch, 1, pixels]`), as
/// `f32` (0 for a dense target).
#[cube]
pub(super) fn labels_of<I: Numeric, N: Size>(
    labels: &Tensor<Vector<I, N>>,
    at: usize,
    #[comptime] dense: bool,
) -> Vector<f32, N> {
    let mut l = Vector::<f32, N>::new(0.0f32);
    if !dense {
        l = Vector::<f32, N>::cast_from(labels[at]);
    }
    l
}

/// The dense target's vector at `at` (0 for class indices).
#[cube]
pub(super) fn dense_of<F: Float, N: Size>(
    dense: &Tensor<Vector<F, N>>,
    at: usize,
    #[comptime] is_dense: bool,
) -> Vector<f32, N> {
    let mut t = Vector::<f32, N>::new(0.0f32);
    if is_dense {
        t = Vector::<f32, N>::cast_from(dense[at]);
    }
    t
}

/// The target of class `c` at lane `lane`: the dense target's value `dense[lane]`, or the
/// one-hot of the class index `labels[lane]`.
#[cube]
pub(super) fn target<N: Size>(
    dense: Vector<f32, N>,
    labels: Vector<f32, N>,
    lane: usize,
    c: usize,
    #[comptime] is_dense: bool,
) -> f32 {
    if is_dense {
        dense[lane]
    } else {
        one_hot(labels[lane], c)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    thread_local! {
        /// Caps [`cube_size`] in tests, to run the kernels in cubes smaller than a GPU's 256
        /// threads (a device with a lower limit) on one that allows 256. Per thread (the
        /// kernels are launched on the calling thread), so that a test that narrows the cubes
        /// leaves the tests running beside it as they are.
        pub(in crate::kernels) static CUBE_LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };

        /// Caps [`Data::lanes`] in tests, to run a shape whose rows allow vector loads with
        /// narrower ones (or none). Per thread, as [`CUBE_LIMIT`].
        pub(in crate::kernels) static LANES_LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
}
