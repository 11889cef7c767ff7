//! Criterion benchmarks of the burn 0.22 line: forward and forward+backward of every loss on
//! the three cases of `shared/anchors/bench_dice.py` (the 0.21 line's `benches/losses.rs`), on
//! burn-flex with autodiff, with the Flex kernels (a backend extension) and, for `DiceLoss`,
//! the generic path. Group names match the 0.21 line's `flex/…` rows, for side-by-side tables.
//!
//! `cargo bench --manifest-path crates/burn-dice-0.22/Cargo.toml --bench losses`; filter with a
//! regex, e.g. `-- 'flex/a'`.

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

fn benches(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    case_on::<4>(c, "flex", &device, Case::SigmoidDense);
    case_on::<4>(c, "flex", &device, Case::SoftmaxIndices);
    case_on::<5>(c, "flex", &device, Case::SoftmaxIndices3d);
}

criterion_group!(losses, benches);
criterion_main!(losses);
