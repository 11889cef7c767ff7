//! The fused CubeCL kernels on burn's CubeCL backends (burn-wgpu; burn-cuda with `cuda`): the
//! operations, how they run on `CubeBackend` and through burn-fusion's `Fusion`, their
//! autodiff backward, and the run-time choice of backend.
//!
//! The kernels themselves are written once, generic over the CubeCL runtime and the element
//! type (`stats.rs`, with the terms of `ce.rs` and `focal.rs`, on the helpers of
//! `common.rs`). Each operation is an [`Op`] run by [`CubeKernels::run`]: on
//! `CubeBackend<R, ..>` it launches the kernels; on
//! `Fusion<CubeBackend<R, ..>>` (burn-wgpu's default) it is registered in the fusion stream as
//! a custom operation (burn-ir's `CustomOpIr`), which runs the `CubeBackend` version when the
//! stream executes; under `Autodiff` a custom backward (burn-autodiff's `Backward`) runs the
//! operation's backward [`Op`] on the saved input. Everything stays lazy: nothing is read back.

mod ce;
mod common;
mod focal;
mod stats;

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::backend::{run, unstack, Forward, FusedOp, TargetPrim};
use super::input::{Extra, PreparedTarget, Stats, Terms, Verdict};
use crate::activation::Activation;
use crate::downcast::{first_backend, inner_float, is_backend};
use burn_dice_core::gpu::{activation_code, ExtraTerm, StatsSpec, TermValues};
#[cfg(feature = "wgpu")]
pub use common::wgpu_plane_reductions;
use common::Data;
pub use common::{launches, set_plane_reductions};

/// One operation of the kernels: what it computes, with its options.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// The `[rows, batch, class]` statistics and extra term (see [`stats::ExtraTerm`]) and,
    /// with `check`, the `[4]` verdict.
    StatsForward {
        spec: StatsSpec,
        values: TermValues,
        check: bool,
    },
    /// Their input gradient from the gradient of the first output.
    StatsBackward { spec: StatsSpec, values: TermValues },
}

impl Op {
    /// The name of the operation in a fusion stream.
    fn name(&self) -> &'static str {
        match self {
            Op::StatsForward { .. } => "burn-dice stats forward",
            Op::StatsBackward { .. } => "burn-dice stats backward",
        }
    }

    /// The shapes and element types of the outputs for an input of shape `[batch, class,
    /// pixels]` and type `dtype`: the sums and the verdict in `f32` whatever the input's type,
    /// the gradient in the input's.
    fn outputs(&self, [b, c, n]: [usize; 3], dtype: DType) -> Vec<(Vec<usize>, DType)> {
        match self {
            Op::StatsForward { spec, check, .. } => {
                let mut out = vec![(vec![spec.extra.rows(), b, c], DType::F32)];
                if *check {
                    out.push((vec![4], DType::F32));
                }
                out
            }
            Op::StatsBackward { .. } => vec![(vec![b, c, n], dtype)],
        }
    }
}

/// The tensors of one launch, as primitives of backend `B`: the input `[batch, class,
/// pixels]`, a dense target or class indices, the validity weights, the class weights of the
/// cross-entropy, and (backward operations) the gradient of the forward operation's output.
pub(crate) struct Inputs<B: Backend> {
    pub x: FloatTensor<B>,
    pub dense: Option<FloatTensor<B>>,
    pub labels: Option<IntTensor<B>>,
    pub valid: Option<FloatTensor<B>>,
    pub weight: Option<FloatTensor<B>>,
    pub grad: Option<FloatTensor<B>>,
}

impl<B: Backend> Clone for Inputs<B> {
    fn clone(&self) -> Self {
        Self {
            x: self.x.clone(),
            dense: self.dense.clone(),
            labels: self.labels.clone(),
            valid: self.valid.clone(),
            weight: self.weight.clone(),
            grad: self.grad.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Inputs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("x", &self.x.shape())
            .field("dense", &self.dense.is_some())
            .field("labels", &self.labels.is_some())
            .field("valid", &self.valid.is_some())
            .field("weight", &self.weight.is_some())
            .field("grad", &self.grad.is_some())
            .finish()
    }
}

/// Which optional tensors an [`Inputs`] holds, to take it apart into a list and back.
#[derive(Debug, Clone, Copy)]
struct Layout {
    dense: bool,
    labels: bool,
    valid: bool,
    weight: bool,
    grad: bool,
}

impl Layout {
    /// The number of float tensors.
    fn floats(&self) -> usize {
        1 + [self.dense, self.valid, self.weight, self.grad]
            .iter()
            .filter(|&&p| p)
            .count()
    }
}

impl<B: Backend> Inputs<B> {
    /// The float tensors in a fixed order (`x`, dense, valid, weight, grad), the labels.
    fn into_parts(self) -> (Vec<FloatTensor<B>>, Option<IntTensor<B>>, Layout) {
        let layout = Layout {
            dense: self.dense.is_some(),
            labels: self.labels.is_some(),
            valid: self.valid.is_some(),
            weight: self.weight.is_some(),
            grad: self.grad.is_some(),
        };
        let mut floats = vec![self.x];
        floats.extend(self.dense);
        floats.extend(self.valid);
        floats.extend(self.weight);
        floats.extend(self.grad);
        (floats, self.labels, layout)
    }

    /// The inverse of [`Inputs::into_parts`].
    fn from_parts(floats: Vec<FloatTensor<B>>, labels: Option<IntTensor<B>>, l: Layout) -> Self {
        let mut floats = floats.into_iter();
        let mut next = |present: bool| present.then(|| floats.next().expect("laid out"));
        let x = next(true).expect("the input");
        let (dense, valid, weight, grad) =
            (next(l.dense), next(l.valid), next(l.weight), next(l.grad));
        Self {
            x,
            dense,
            labels,
            valid,
            weight,
            grad,
        }
    }
}

/// A backend whose tensors the CubeCL kernels run on.
pub(crate) trait CubeKernels: Backend {
    /// Runs `op` on `inputs`; the outputs in the order of [`Op::outputs`].
    fn run(op: &Op, inputs: Inputs<Self>) -> Vec<FloatTensor<Self>>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> CubeKernels
    for CubeBackend<R, F, I, BT>
{
    fn run(op: &Op, inputs: Inputs<Self>) -> Vec<CubeTensor<R>> {
        let data = Data {
            x: into_contiguous(inputs.x),
            dense: inputs.dense.map(into_contiguous),
            labels: inputs.labels.map(into_contiguous),
            valid: inputs.valid.map(into_contiguous),
        };
        let weight = inputs.weight.map(into_contiguous);
        match *op {
            Op::StatsForward {
                spec,
                values,
                check,
            } => {
                let (sums, verdict) = stats::forward(&data, weight, spec, values, check);
                std::iter::once(sums).chain(verdict).collect()
            }
            Op::StatsBackward { spec, values } => {
                let grad = inputs.grad.expect("a backward op has a gradient");
                // The gradient of the forward's `f32` output (a no-op cast unless something
                // downstream changed its type).
                let grad = burn_cubecl::kernel::cast(into_contiguous(grad), DType::F32);
                vec![stats::backward(&data, weight, grad, spec, values)]
            }
        }
    }
}

/// An [`Op`] in a fusion stream: its description and options.
#[derive(Debug)]
struct FusionOp<B> {
    desc: CustomOpIr,
    op: Op,
    layout: Layout,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + CubeKernels> Operation<B::FusionRuntime> for FusionOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let n = self.layout.floats();
        let floats = self.desc.inputs[..n]
            .iter()
            .map(|ir| handles.get_float_tensor::<B>(ir))
            .collect();
        let labels = self
            .layout
            .labels
            .then(|| handles.get_int_tensor::<B>(&self.desc.inputs[n]));
        let outputs = B::run(&self.op, Inputs::from_parts(floats, labels, self.layout));
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, tensor);
        }
    }
}

impl<B: FusionBackend + CubeKernels> CubeKernels for Fusion<B> {
    fn run(op: &Op, inputs: Inputs<Self>) -> Vec<FloatTensor<Self>> {
        let client = inputs.x.client.clone();
        let dtype = inputs.x.dtype;
        let dims = inputs.x.shape.dims::<3>();
        let (floats, labels, layout) = inputs.into_parts();
        let streams = OperationStreams::with_inputs(floats.iter().chain(labels.iter()));
        let outputs: Vec<TensorIr> = op
            .outputs(dims, dtype)
            .into_iter()
            .map(|(shape, dtype)| {
                TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), dtype)
            })
            .collect();
        let mut irs: Vec<TensorIr> = floats.into_iter().map(|t| t.into_ir()).collect();
        irs.extend(labels.map(|t| t.into_ir()));
        let desc = CustomOpIr::new(op.name(), &irs, &outputs);
        client.register(
            streams,
            OperationIr::Custom(desc.clone()),
            FusionOp::<B> {
                desc,
                op: *op,
                layout,
                _backend: PhantomData,
            },
        )
    }
}

/// A forward [`Op`] with its backward [`Op`] and the class weights of the cross-entropy, as a
/// [`FusedOp`]: the backward op runs on the saved inputs with the gradient of the forward op's
/// first output.
#[derive(Debug, Clone)]
struct KernelOp<K: Backend> {
    forward: Op,
    backward: Op,
    weight: Option<FloatTensor<K>>,
}

impl<K: CubeKernels> FusedOp<K> for KernelOp<K> {
    type Host = ();
    type State = (Op, Inputs<K>);

    fn forward(
        &self,
        x: FloatTensor<K>,
        target: TargetPrim<K>,
        valid: Option<FloatTensor<K>>,
        tracked: bool,
    ) -> Option<Forward<K, Self>> {
        let (dense, labels) = match target {
            TargetPrim::Dense(t) => (Some(t), None),
            TargetPrim::Indices(l) => (None, Some(l)),
        };
        let dtype = x.dtype();
        let same = |t: &Option<FloatTensor<K>>| t.as_ref().is_none_or(|t| t.dtype() == dtype);
        if !(same(&dense) && same(&valid) && same(&self.weight) && is_float(dtype)) {
            return None;
        }
        let inputs = Inputs {
            x,
            dense,
            labels,
            valid,
            weight: self.weight.clone(),
            grad: None,
        };
        let mut outputs = K::run(&self.forward, inputs.clone()).into_iter();
        Some(Forward {
            out: outputs.next().expect("every op has an output"),
            rest: outputs.collect(),
            host: (),
            state: tracked.then_some((self.backward, inputs)),
        })
    }

    fn backward((op, mut inputs): Self::State, grad: FloatTensor<K>) -> FloatTensor<K> {
        inputs.grad = Some(grad);
        K::run(&op, inputs).remove(0)
    }
}

/// Runs `forward` (with `backward` for the input's gradient) where `B` is `K` or
/// `Autodiff<K>`: see [`run`]. `None` also for tensors of another element type than the input.
fn launch<B: Backend, K: CubeKernels>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    weight: Option<&Tensor<B, 1>>,
    forward: Op,
    backward: Op,
) -> Option<Vec<B::FloatTensorPrimitive>> {
    let weight = match weight {
        Some(w) => Some(inner_float::<B, K, 1>(w.clone())?),
        None => None,
    };
    let op = KernelOp::<K> {
        forward,
        backward,
        weight,
    };
    run::<B, K, _>(input, target, &op).map(|(outputs, ())| outputs)
}

/// The element types the kernels read: `f32`, and `f16`/`bf16` where the device has them.
fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// burn-wgpu's backend without its fusion layer (its default `Wgpu` is `Fusion` of it), of
/// float element `F`.
#[cfg(feature = "wgpu")]
type WgpuCube<F = f32> = CubeBackend<burn_wgpu::WgpuRuntime, F, i32, u32>;
/// burn-cuda's backend without its fusion layer (its default `Cuda` is `Fusion` of it).
#[cfg(feature = "cuda")]
type CudaCube<F = f32> = CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;

/// Runs `$body` with `$k` each backend the kernels are built for, until one gives `Some`:
/// burn-wgpu's `Wgpu<f32>` and `Wgpu<f16>` (WGSL and SPIR-V have no `bf16` arithmetic;
/// `Wgpu<bf16>` is left to the generic path), burn-cuda's `Cuda<f32>`, `Cuda<f16>` and
/// `Cuda<bf16>`, each with and without fusion. The element type is the backend's default;
/// the kernels read whatever `f32`/`f16`/`bf16` tensor they are given ([`is_float`]).
macro_rules! on_cube_backends {
    ($k:ident => $body:expr) => {
        first_backend!($k => $body;
            #[cfg(feature = "wgpu")] Fusion<WgpuCube>,
            #[cfg(feature = "wgpu")] WgpuCube,
            #[cfg(feature = "wgpu")] Fusion<WgpuCube<burn::tensor::f16>>,
            #[cfg(feature = "wgpu")] WgpuCube<burn::tensor::f16>,
            #[cfg(feature = "cuda")] Fusion<CudaCube>,
            #[cfg(feature = "cuda")] CudaCube,
            #[cfg(feature = "cuda")] Fusion<CudaCube<burn::tensor::f16>>,
            #[cfg(feature = "cuda")] CudaCube<burn::tensor::f16>,
            #[cfg(feature = "cuda")] Fusion<CudaCube<burn::tensor::bf16>>,
            #[cfg(feature = "cuda")] CudaCube<burn::tensor::bf16>,
        )
    };
}

/// Whether `B` is one of the backends the kernels run on, plain or under `Autodiff`.
pub(super) fn handles<B: Backend>() -> bool {
    on_cube_backends!(K => is_backend::<B, K>()).is_some()
}

/// See [`super::class_stats`]: the statistics and, in the same pass, the `extra` term.
pub(super) fn class_stats<B: Backend>(
    input: &Tensor<B, 3>,
    target: &PreparedTarget<B>,
    activation: Activation,
    terms: Terms,
    check: bool,
    extra: &Extra<B>,
) -> Option<Stats<B>> {
    let (term, values, weight) = match extra {
        Extra::None => (ExtraTerm::None, TermValues::default(), None),
        Extra::Ce(options) => {
            let values = TermValues {
                pos_weight: options.pos_weight,
                label_smoothing: options.label_smoothing as f32,
                ..TermValues::default()
            };
            let weight = options.class_weight.as_ref();
            let term = ExtraTerm::Ce {
                class_weight: weight.is_some(),
            };
            (term, values, weight)
        }
        Extra::Focal(options) => {
            let values = TermValues {
                gamma: options.gamma as f32,
                alpha: options.alpha.unwrap_or(0.0) as f32,
                ..TermValues::default()
            };
            let term = ExtraTerm::Focal {
                alpha: options.alpha.is_some(),
            };
            (term, values, None)
        }
    };
    let spec = StatsSpec {
        activation: activation_code(activation.into()),
        terms,
        extra: term,
    };
    let forward = Op::StatsForward {
        spec,
        values,
        check,
    };
    let backward = Op::StatsBackward { spec, values };
    let outputs = on_cube_backends!(K => launch::<B, K>(input, target, weight, forward, backward))?;
    let mut outputs = outputs.into_iter();
    let stacked = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(outputs.next()?));
    let verdict = match outputs.next() {
        Some(v) => Verdict::Device(Tensor::from_primitive(TensorPrimitive::Float(v))),
        None => Verdict::Unchecked,
    };
    let (sums, extra) = unstack(stacked, extra);
    Some(Stats {
        sums,
        verdict,
        extra: Some(extra),
    })
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::kernels::tests::{compare_on, deferred_checks_on, SMALL};
    use crate::kernels::{generic_only, path, KernelPath};
    use burn_autodiff::Autodiff;
    use burn_wgpu::{Wgpu, WgpuDevice};

    type Ad<B> = Autodiff<B>;

    /// Shapes that cover the kernels' geometry: one block; many cubes per sample with a
    /// partial last tile; more classes than a thread keeps in registers at once; each with
    /// scalar loads (an odd number of pixels) and with vector loads (`Data::lanes`: 4 for
    /// 64 × 130 pixels, 2 for 6 × 5).
    const SHAPES: [[usize; 4]; 5] = [
        SMALL,
        [2, 3, 67, 129],
        [2, 3, 64, 130],
        [2, 11, 9, 13],
        [2, 11, 6, 5],
    ];

    /// The default wgpu device once an adapter has been seen to work. Without one the test
    /// says so on stderr and does not run (a fresh machine without a Vulkan driver), unless
    /// `BURN_DICE_REQUIRE` names `wgpu` (CI): then it fails with what to install.
    fn device() -> Option<WgpuDevice> {
        static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let device = WgpuDevice::default();
        let works = *WORKS.get_or_init(|| {
            let d = device.clone();
            std::panic::catch_unwind(move || Tensor::<Wgpu, 1>::from_floats([1.0], &d).into_data())
                .is_ok()
        });
        if works {
            return Some(device);
        }
        let why = "no wgpu adapter works; without a GPU install lavapipe: \
                   apt-get install -y libvulkan1 mesa-vulkan-drivers";
        let required = std::env::var("BURN_DICE_REQUIRE")
            .is_ok_and(|v| v.split(',').any(|w| w.trim() == "wgpu"));
        assert!(!required, "{why} (BURN_DICE_REQUIRE asks for `wgpu`)");
        eprintln!("skipped: {why}");
        None
    }

    #[test]
    fn kernels_equal_generic_on_wgpu_with_fusion() {
        let Some(device) = device() else { return };
        for shape in SHAPES {
            compare_on::<Ad<Wgpu>>(&device, shape);
        }
    }

    #[test]
    fn kernels_equal_generic_on_wgpu_without_fusion() {
        let Some(device) = device() else { return };
        for shape in SHAPES {
            compare_on::<Ad<WgpuCube>>(&device, shape);
        }
    }

    /// The reductions in cubes of 64 threads (the fewest they take), as on a device that
    /// allows fewer than 256: the tree's first level then adds 4 values, not 16. On the
    /// shapes of several cubes per sample (scalar and vector loads, few and many classes):
    /// the one-block shapes fill one cube either way.
    #[test]
    fn kernels_equal_generic_in_cubes_of_64() {
        let Some(device) = device() else { return };
        let limit = &super::common::tests::CUBE_LIMIT;
        limit.set(64);
        let result = std::panic::catch_unwind(|| {
            for shape in &SHAPES[1..4] {
                compare_on::<Ad<WgpuCube>>(&device, *shape);
            }
        });
        limit.set(usize::MAX);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn kernel_checks_fail_with_the_burn_ops_messages() {
        let Some(device) = device() else { return };
        deferred_checks_on::<Wgpu>(&device);
        deferred_checks_on::<Ad<Wgpu>>(&device);
        deferred_checks_on::<Ad<WgpuCube>>(&device);
    }

    /// One checked `DiceLoss` call on random `[2, 3, 8, 8]` logits and class indices; with
    /// `bad`, one index of sample 1 set to it.
    fn checked_call(
        loss: &crate::DiceLoss<Wgpu>,
        device: &WgpuDevice,
        bad: Option<i64>,
    ) -> Tensor<Wgpu, 1> {
        use burn::tensor::{Distribution, Int};
        let x = Tensor::<Wgpu, 4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), device);
        let t =
            Tensor::<Wgpu, 4, Int>::random([2, 1, 8, 8], Distribution::Uniform(0.0, 3.0), device);
        let t = match bad {
            Some(v) => t.slice_fill([1..2, 0..1, 2..3, 4..5], v),
            None => t,
        };
        loss.forward(x, t)
    }

    /// After a thread's first checked call, the calls read nothing back until
    /// `CHECK_BATCH` verdicts wait on the device; then one read-back takes them all.
    #[test]
    fn checked_calls_read_back_once_per_batch() {
        use crate::checks::{readbacks, CHECK_BATCH};
        use crate::DiceLossConfig;
        let Some(device) = device() else { return };
        let loss = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .init::<Wgpu>(&device);
        let call = || checked_call(&loss, &device, None);
        let start = readbacks();
        drop(call());
        assert_eq!(
            readbacks() - start,
            1,
            "the first checked call waits for its verdict"
        );
        for i in 1..=3 * CHECK_BATCH {
            drop(call());
            let expected = 1 + i / CHECK_BATCH;
            assert_eq!(
                (readbacks() - start) as usize,
                expected,
                "read-backs after {} checked calls",
                i + 1
            );
        }
        crate::wait_for_checks();
        assert_eq!(readbacks() - start, 1 + 3, "nothing left to read back");
        crate::wait_for_checks();
        assert_eq!(readbacks() - start, 1 + 3, "nothing left to read back");
    }

    /// A failure in the middle of a batch is reported with the call that saw it, once the
    /// batch is read back.
    #[test]
    fn a_held_verdict_names_its_call() {
        use crate::checks::CHECK_BATCH;
        use crate::kernels::tests::panic_message;
        use crate::DiceLossConfig;
        let Some(device) = device() else { return };
        let loss = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .init::<Wgpu>(&device);
        let call = |bad: bool| drop(checked_call(&loss, &device, bad.then_some(9)));
        call(false);
        // Call 3 of this thread holds a class index of 9; it is read back with its batch.
        let message = panic_message(|| {
            for i in 2..=CHECK_BATCH + 2 {
                call(i == 3);
            }
            crate::wait_for_checks();
        })
        .expect("the bad call is reported");
        assert!(
            message.starts_with(
                "DiceLoss: `target` holds class index 9, expected 0..3 (input has 3 channel(s)) \
                 (found in the data of checked call 3 on this thread"
            ),
            "{message}"
        );
    }

    /// The vector loads the kernels take on this adapter: 4 `f32` where the pixels allow it,
    /// else narrower, else none. The shapes of `SHAPES` then run the vector path through the
    /// comparisons above (a lane count the kernel did not use would read the wrong pixels).
    #[test]
    fn vector_loads_follow_the_rows() {
        use burn::tensor::Int;
        let Some(device) = device() else { return };
        let data = |pixels: usize| {
            let x = Tensor::<WgpuCube, 3>::zeros([2, 3, pixels], &device);
            let labels = Tensor::<WgpuCube, 3, Int>::zeros([2, 1, pixels], &device);
            Data {
                x: x.into_primitive().tensor(),
                dense: None,
                labels: Some(labels.into_primitive()),
                valid: None,
            }
        };
        let widest = {
            let client = <burn_wgpu::WgpuRuntime as cubecl::Runtime>::client(&device);
            let widest = client.io_optimized_vector_sizes(4).next().unwrap();
            widest
        };
        assert!(
            widest >= 4,
            "lavapipe and GPUs load 128 bits; this adapter: {widest}"
        );
        assert_eq!(data(64 * 130).lanes(), 4);
        assert_eq!(data(30).lanes(), 2);
        assert_eq!(data(35).lanes(), 1);
        // One shape whose rows take 4 lanes, run with 2 and with scalar loads (as on a device
        // that loads less at once): every width gives the generic path's values. (The only
        // test that narrows them, so the asserts above see the device's widths.)
        let limit = &super::common::tests::LANES_LIMIT;
        let result = std::panic::catch_unwind(|| {
            for lanes in [2, 1] {
                limit.set(lanes);
                assert_eq!(data(96).lanes(), lanes);
                compare_on::<Ad<WgpuCube>>(&device, [2, 3, 8, 12]);
            }
        });
        limit.set(usize::MAX);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn the_cube_path_is_taken_on_wgpu() {
        assert_eq!(path::<Wgpu>(), KernelPath::Cube);
        assert_eq!(path::<Ad<Wgpu>>(), KernelPath::Cube);
        assert_eq!(path::<WgpuCube>(), KernelPath::Cube);
        assert_eq!(path::<Ad<WgpuCube>>(), KernelPath::Cube);
        // Half precision: `Wgpu<f16>`, with and without fusion.
        type WgpuF16 = Wgpu<burn::tensor::f16>;
        assert_eq!(path::<WgpuF16>(), KernelPath::Cube);
        assert_eq!(path::<Ad<WgpuF16>>(), KernelPath::Cube);
        assert_eq!(path::<WgpuCube<burn::tensor::f16>>(), KernelPath::Cube);
        assert_eq!(generic_only(path::<Ad<Wgpu>>), KernelPath::Generic);
        // Other element types and checkpointing strategies are left to burn ops.
        assert_eq!(path::<Wgpu<f64>>(), KernelPath::Generic);
        type Balanced = Autodiff<Wgpu, burn_autodiff::checkpoint::strategy::BalancedCheckpointing>;
        assert_eq!(path::<Balanced>(), KernelPath::Generic);
    }
}

#[cfg(all(test, feature = "cuda"))]
mod cuda_tests {
    use crate::kernels::{path, KernelPath};

    /// burn-cuda gets the same kernels (the type is recognised without a device).
    #[test]
    fn the_cube_path_is_taken_on_cuda() {
        type Cuda = burn_cuda::Cuda;
        assert_eq!(path::<Cuda>(), KernelPath::Cube);
        assert_eq!(path::<burn_autodiff::Autodiff<Cuda>>(), KernelPath::Cube);
        assert_eq!(path::<super::CudaCube>(), KernelPath::Cube);
        assert_eq!(
            path::<burn_cuda::Cuda<burn::tensor::f16>>(),
            KernelPath::Cube
        );
        assert_eq!(
            path::<burn_cuda::Cuda<burn::tensor::bf16>>(),
            KernelPath::Cube
        );
    }
}
