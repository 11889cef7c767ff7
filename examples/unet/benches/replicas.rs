//! What the replica group costs a data-parallel training step: the example's U-Net (depth 4,
//! 8 base channels, batch norm) on burn-flex, Dice+CE with batch Dice, one step of 2 replicas
//! (threads, each a clone of the model with 8 images of 64×64, as burn-train's multi-device
//! strategy runs them): with the group (the replicas' statistics summed before the ratio) and
//! without it (each replica's own batch Dice). The group's cost is one read-back of the
//! `[3, class]` statistics and the wait for the other replica at the loss.
//!
//! `cargo bench -p unet --bench replicas`

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use burn::module::Module;
use burn::tensor::{backend::Backend, Distribution, Int, Tensor, TensorData};
use burn::train::TrainStep;
use criterion::{criterion_group, criterion_main, Criterion};
use unet::data::SegBatch;
use unet::model::UNetConfig;
use unet::training::{LossKind, SegModel, TrainConfig};

type A = burn_autodiff::Autodiff<burn_flex::Flex>;

const REPLICAS: usize = 2;
const BATCH: usize = 8;
const SIDE: usize = 64;
const CLASSES: usize = 4;

/// One replica's batch: random images and labels (the cost does not depend on the values).
fn batch<B: Backend>(seed: u64, device: &B::Device) -> SegBatch<B> {
    B::seed(device, seed);
    let images = Tensor::random(
        [BATCH, 1, SIDE, SIDE],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels = Tensor::<B, 4, Int>::from_data(
        TensorData::new(
            (0..BATCH * SIDE * SIDE)
                .map(|i| ((i * 7 + seed as usize) % 13 % CLASSES) as i64)
                .collect(),
            [BATCH, 1, SIDE, SIDE],
        ),
        device,
    );
    SegBatch { images, labels }
}

/// One step of every replica, each on its own thread.
fn step(model: &SegModel<A>, batches: &[SegBatch<A>]) {
    std::thread::scope(|scope| {
        for b in batches {
            let b = b.clone();
            // A fork per replica and step, as burn-train's workers take one.
            let model = model.clone().fork(&Default::default());
            scope.spawn(move || {
                let out = TrainStep::step(&model, b);
                drop(out.grads);
            });
        }
    });
}

fn replica_group_cost(c: &mut Criterion) {
    let device = Default::default();
    let config = TrainConfig::new(
        UNetConfig::new(CLASSES),
        LossKind::DiceCe,
        (0..CLASSES).map(|k| format!("c{k}")).collect(),
    )
    .with_batch_dice(true)
    .with_replicas(Some(REPLICAS));
    let grouped = SegModel::<A>::new(&config, &device);
    assert!(grouped.group.is_some());
    let alone = SegModel {
        group: None,
        ..grouped.clone()
    };
    let batches: Vec<_> = (0..REPLICAS as u64)
        .map(|r| batch::<A>(r, &device))
        .collect();
    let mut g = c.benchmark_group("unet step, 2 replicas, batch Dice");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(20));
    g.bench_function("without group", |b| b.iter(|| step(&alone, &batches)));
    g.bench_function("with group", |b| b.iter(|| step(&grouped, &batches)));
    g.finish();
}

criterion_group!(benches, replica_group_cost);
criterion_main!(benches);
