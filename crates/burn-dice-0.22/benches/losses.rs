//! Criterion benchmarks of the burn 0.22 line: forward and forward+backward of every loss on
//! the three cases of `shared/anchors/bench_dice.py` (the 0.21 line's `benches/losses.rs`), on
//! burn-flex with autodiff, with the Flex kernels (a backend extension) and, for `DiceLoss`,
//! the generic path. Group names match the 0.21 line's `flex/…` rows, for side-by-side tables.
//! With feature `wgpu` also on burn-wgpu (`wgpu/…`, where an adapter works), every loss with
//! the CubeCL kernels and on the generic path: `N` calls queued back to back, one wait for the
//! device at the end, as a training loop runs them (the time per call is `total / N`).
//!
//! `cargo bench --manifest-path crates/burn-dice-0.22/Cargo.toml --bench losses`; filter with a
//! regex, e.g. `-- 'flex/a'`; on a GPU `--features wgpu -- 'wgpu/'`.

// criterion's macros define undocumented items.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use burn::tensor::Device;
use common::{forward, forward_backward, inputs, loss_fn, on_path, Case, Loss};
use criterion::{criterion_group, criterion_main, Criterion};

fn case_on<const D: usize>(c: &mut Criterion, name: &str, device: &Device, case: Case) {
    let data = inputs::<D>(case, device);
    let mut group = c.benchmark_group(format!("{name}/{}", case.short()));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for loss in Loss::ALL {
        let f = loss_fn::<D>(loss, case, &data.target, device);
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

/// Every loss on `device` (burn-wgpu with autodiff), kernels and generic path: the calls of an
/// iteration batch are queued, then one wait.
#[cfg(feature = "wgpu")]
fn case_on_device<const D: usize>(c: &mut Criterion, device: &Device, case: Case) {
    let data = inputs::<D>(case, device);
    let mut group = c.benchmark_group(format!("wgpu/{}", case.short()));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(1));
    let sync = || device.sync().expect("the device runs the calls");
    for loss in Loss::ALL {
        let f = loss_fn::<D>(loss, case, &data.target, device);
        for generic in [false, true] {
            let path = if generic { "generic" } else { "fused" };
            group.bench_function(format!("{}/{path}/fwd", loss.name()), |b| {
                b.iter_custom(|n| {
                    sync();
                    let start = std::time::Instant::now();
                    on_path(generic, &mut || {
                        for _ in 0..n {
                            drop(f(data.logits.clone()));
                        }
                    });
                    sync();
                    start.elapsed()
                })
            });
            group.bench_function(format!("{}/{path}/fwd+bwd", loss.name()), |b| {
                b.iter_custom(|n| {
                    sync();
                    let start = std::time::Instant::now();
                    on_path(generic, &mut || {
                        for _ in 0..n {
                            drop(forward_backward(&f, &data.logits));
                        }
                    });
                    sync();
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    case_on::<4>(c, "flex", &device, Case::SigmoidDense);
    case_on::<4>(c, "flex", &device, Case::SoftmaxIndices);
    case_on::<5>(c, "flex", &device, Case::SoftmaxIndices3d);
    #[cfg(feature = "wgpu")]
    {
        let gpu = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let probe = gpu.clone();
        let works = burn_dice_core::testing::gpu_adapter_works(move || {
            let _ = burn::tensor::Tensor::<1>::from_floats([1.0], &probe).into_data();
        });
        if works {
            let gpu = gpu.autodiff();
            case_on_device::<4>(c, &gpu, Case::SigmoidDense);
            case_on_device::<4>(c, &gpu, Case::SoftmaxIndices);
            case_on_device::<5>(c, &gpu, Case::SoftmaxIndices3d);
            case_on_device::<5>(c, &gpu, Case::SoftmaxIndices3dLarge);
        }
    }
}

criterion_group!(losses, benches);
criterion_main!(losses);
