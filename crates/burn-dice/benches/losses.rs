//! Criterion benchmarks: forward and forward+backward of every loss on the three cases of
//! `shared/anchors/bench_dice.py`, on `Autodiff<NdArray>` and `Autodiff<Flex>` (and wgpu with
//! `--features bench-wgpu`), with the kernels (CPU or CubeCL) and, for `DiceLoss`, the generic path.
//!
//! `cargo bench -p burn-dice --bench losses`; filter with a regex, e.g. `-- 'flex/a'`.
//! For the side-by-side ratios with MONAI and the memory figures see `benches/compare.rs` and
//! `scripts/bench-ratios.sh`.

// criterion's macros define undocumented items.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use common::{forward, forward_backward, inputs, loss_fn, on_path, Case, Loss};
use criterion::{criterion_group, criterion_main, Criterion};

fn case_on<B: AutodiffBackend, const D: usize>(c: &mut Criterion, backend: &str, case: Case) {
    let device = Default::default();
    let data = inputs::<B, D>(case, &device);
    let mut group = c.benchmark_group(format!("{backend}/{}", case.short()));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for loss in Loss::ALL {
        let f = loss_fn::<B, D>(loss, case, &data.target, &device);
        let paths: &[bool] = if loss == Loss::Dice {
            &[false, true]
        } else {
            &[false]
        };
        for &generic in paths {
            let path = if generic { "generic" } else { "fused" };
            group.bench_function(format!("{}/{path}/fwd", loss.name()), |b| {
                b.iter(|| {
                    on_path(generic, &mut || {
                        std::hint::black_box(forward(&f, &data.logits));
                    })
                })
            });
            group.bench_function(format!("{}/{path}/fwd+bwd", loss.name()), |b| {
                b.iter(|| on_path(generic, &mut || drop(forward_backward(&f, &data.logits))))
            });
        }
    }
    group.finish();
}

fn on<B: AutodiffBackend>(c: &mut Criterion, backend: &str) {
    case_on::<B, 4>(c, backend, Case::SigmoidDense);
    case_on::<B, 4>(c, backend, Case::SoftmaxIndices);
    case_on::<B, 5>(c, backend, Case::SoftmaxIndices3d);
}

fn benches(c: &mut Criterion) {
    on::<burn_autodiff::Autodiff<burn_ndarray::NdArray<f32>>>(c, "ndarray");
    on::<burn_autodiff::Autodiff<burn_flex::Flex>>(c, "flex");
    #[cfg(feature = "bench-wgpu")]
    on::<burn_autodiff::Autodiff<burn_wgpu::Wgpu>>(c, "wgpu");
}

criterion_group!(losses, benches);
criterion_main!(losses);
