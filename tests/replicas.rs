//! Data-parallel batch Dice: `N` replicas, each a thread with its share of the batch and a clone
//! of one `ReplicaGroup`, against one device with the whole batch, for every loss with
//! `batch: true`. The replicas' values average to the one-device value (every Dice-only loss
//! gives each replica exactly that value), and their input gradients, put side by side as the
//! training loop combines them, are the one-device gradient: both to 1e-6 relative. On
//! burn-ndarray, burn-flex and (feature `wgpu`) burn-wgpu, for N in {2, 3, 4}; the same on
//! burn-flex with the replicas in several "processes" (threads that sum through
//! `burn_dice::processes` over TCP on 127.0.0.1); plus a replica that sits out a step, which
//! must fail the others with the group and step named, in time.

use std::time::{Duration, Instant};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, GeneralizedDiceLossConfig,
    GradientCombine, ReplicaGroup, TverskyLossConfig,
};
use burn_dice_tests::{grad_err, rel_err, values, XorShift};

/// `[batch, class, h, w]` of the runs: 12 samples split evenly on 2, 3 and 4 replicas.
const SHAPE: [usize; 4] = [12, 3, 6, 5];
/// The bound on the value's relative error and the gradient's error relative to its largest
/// component.
const TOLERANCE: f64 = 1e-6;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Dice,
    DiceSquaredJaccard,
    DiceSoftLabel,
    GeneralizedDice,
    Tversky,
    DiceCe,
    DiceFocal,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Dice,
        Kind::DiceSquaredJaccard,
        Kind::DiceSoftLabel,
        Kind::GeneralizedDice,
        Kind::Tversky,
        Kind::DiceCe,
        Kind::DiceFocal,
    ];

    /// Whether the loss is the batch Dice term alone (each replica then gets the one-device
    /// value itself, and adding the replicas' gradients is exact too).
    fn dice_only(self) -> bool {
        !matches!(self, Kind::DiceCe | Kind::DiceFocal)
    }

    /// Dense soft targets instead of class indices.
    fn dense(self) -> bool {
        matches!(self, Kind::DiceSoftLabel)
    }
}

/// `loss` on `group` where given (through its `with_replicas`).
fn with<L>(loss: L, group: Option<ReplicaGroup>, with_replicas: fn(L, ReplicaGroup) -> L) -> L {
    match group {
        Some(group) => with_replicas(loss, group),
        None => loss,
    }
}

/// The loss of `kind` with `batch: true`, on `group` where given.
fn loss<B: Backend>(
    kind: Kind,
    group: Option<ReplicaGroup>,
    input: Tensor<B, 4>,
    labels: &Labels<B>,
) -> Tensor<B, 1> {
    let device = input.device();
    let dice = DiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .with_include_background(false)
        .with_batch(true);
    match (kind, labels) {
        (Kind::Dice, Labels::Indices(y)) => with(
            dice.init(&device),
            group,
            burn_dice::DiceLoss::with_replicas,
        )
        .forward(input, y.clone()),
        (Kind::DiceSquaredJaccard, Labels::Indices(y)) => with(
            dice.with_squared_pred(true)
                .with_jaccard(true)
                .with_include_background(true)
                .init(&device),
            group,
            burn_dice::DiceLoss::with_replicas,
        )
        .forward(input, y.clone()),
        (Kind::DiceSoftLabel, Labels::Dense(y)) => with(
            dice.with_activation(Activation::Sigmoid)
                .with_soft_label(true)
                .init(&device),
            group,
            burn_dice::DiceLoss::with_replicas,
        )
        .forward(input, y.clone()),
        (Kind::GeneralizedDice, Labels::Indices(y)) => with(
            GeneralizedDiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_batch(true)
                .init(&device),
            group,
            burn_dice::GeneralizedDiceLoss::with_replicas,
        )
        .forward(input, y.clone()),
        (Kind::Tversky, Labels::Indices(y)) => with(
            TverskyLossConfig::new()
                .with_activation(Activation::Softmax)
                .with_alpha(0.3)
                .with_beta(0.7)
                .with_batch(true)
                .init(&device),
            group,
            burn_dice::TverskyLoss::with_replicas,
        )
        .forward(input, y.clone()),
        (Kind::DiceCe, Labels::Indices(y)) => with(
            DiceCELossConfig::new().with_dice(dice).init(&device),
            group,
            burn_dice::DiceCELoss::with_replicas,
        )
        .forward(input, y.clone()),
        (Kind::DiceFocal, Labels::Indices(y)) => with(
            DiceFocalLossConfig::new()
                .with_dice(dice)
                .with_gamma(2.0)
                .init(&device),
            group,
            burn_dice::DiceFocalLoss::with_replicas,
        )
        .forward(input, y.clone()),
        (kind, _) => unreachable!("{kind:?} takes the other target kind"),
    }
}

enum Labels<B: Backend> {
    Indices(Tensor<B, 4, Int>),
    Dense(Tensor<B, 4>),
}

/// The whole batch on the host: logits, class indices (class 2 absent from samples 0-5, so
/// that a replica of 2, 3 or 4 sees an empty class the batch does not) and soft targets.
struct Batch {
    logits: Vec<f32>,
    labels: Vec<i64>,
    soft: Vec<f32>,
}

impl Batch {
    fn new(seed: u64) -> Self {
        let [b, c, h, w] = SHAPE;
        let pixels = h * w;
        let mut rng = XorShift::new(seed);
        let logits = (0..b * c * pixels)
            .map(|_| (rng.unit() * 6.0 - 3.0) as f32)
            .collect();
        let labels = (0..b * pixels)
            .map(|i| {
                let classes = if i / pixels < 6 { 2 } else { 3 };
                (rng.unit() * classes as f64) as i64
            })
            .collect();
        let soft = (0..b * c * pixels)
            .map(|_| (0.05 + 0.9 * rng.unit()) as f32)
            .collect();
        Self {
            logits,
            labels,
            soft,
        }
    }

    /// Samples `start..start + len` as tensors on `device`.
    fn part<B: Backend>(
        &self,
        kind: Kind,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Labels<B>) {
        let [_, c, h, w] = SHAPE;
        let per = c * h * w;
        let shape = [len, c, h, w];
        let logits = Tensor::from_data(
            TensorData::new(
                self.logits[start * per..(start + len) * per].to_vec(),
                shape,
            ),
            device,
        );
        let labels = if kind.dense() {
            Labels::Dense(Tensor::from_data(
                TensorData::new(self.soft[start * per..(start + len) * per].to_vec(), shape),
                device,
            ))
        } else {
            let per = h * w;
            Labels::Indices(Tensor::from_data(
                TensorData::new(
                    self.labels[start * per..(start + len) * per].to_vec(),
                    [len, 1, h, w],
                ),
                device,
            ))
        };
        (logits, labels)
    }
}

/// The loss value and input gradient of one device with the whole batch.
fn one_device<B: AutodiffBackend>(
    kind: Kind,
    batch: &Batch,
    device: &B::Device,
) -> (f64, Vec<f64>) {
    let (x, y) = batch.part::<B>(kind, 0, SHAPE[0], device);
    let x = x.require_grad();
    let value = loss(kind, None, x.clone(), &y);
    let grads = value.backward();
    let grad = x.grad(&grads).expect("input gradient");
    (values(value)[0], values(grad))
}

/// The replicas `first..first + group.replicas()` of `replicas` in all (threads of this
/// process, each with its equal share of the batch and a clone of `group`): their values and
/// input gradients, in batch order, each replica's loss divided by `replicas` for `Mean`.
fn run_replicas<B: AutodiffBackend>(
    kind: Kind,
    batch: &Batch,
    group: &ReplicaGroup,
    first: usize,
    replicas: usize,
    device: &B::Device,
) -> Vec<(f64, Vec<f64>)> {
    let share = SHAPE[0] / replicas;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (first..first + group.replicas())
            .map(|r| {
                let group = group.clone();
                scope.spawn(move || {
                    let combine = group.combine();
                    let (x, y) = batch.part::<B>(kind, r * share, share, device);
                    let x = x.require_grad();
                    let value = loss(kind, Some(group), x.clone(), &y);
                    let backward = match combine {
                        GradientCombine::Sum => value.clone(),
                        GradientCombine::Mean => value.clone().div_scalar(replicas as f64),
                    };
                    let grads = backward.backward();
                    let grad = x.grad(&grads).expect("input gradient");
                    (values(value)[0], values(grad))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replica thread"))
            .collect()
    })
}

/// The values and the concatenated input gradients of replicas `results`.
fn side_by_side(results: Vec<(f64, Vec<f64>)>) -> (Vec<f64>, Vec<f64>) {
    let values = results.iter().map(|(v, _)| *v).collect();
    let grad = results.into_iter().flat_map(|(_, g)| g).collect();
    (values, grad)
}

/// The values of `replicas` replicas (threads) with equal shares of the batch and the
/// gradients of their inputs, concatenated in batch order, as `combine` scales them.
fn on_replicas<B: AutodiffBackend>(
    kind: Kind,
    batch: &Batch,
    replicas: usize,
    combine: GradientCombine,
    device: &B::Device,
) -> (Vec<f64>, Vec<f64>) {
    let group = ReplicaGroup::new(format!("{kind:?} on {replicas}"), replicas)
        .with_combine(combine)
        .with_timeout(Duration::from_secs(60));
    let results = run_replicas::<B>(kind, batch, &group, 0, replicas, device);
    assert_eq!(group.steps(), 1, "{kind:?}: one rendezvous a call");
    side_by_side(results)
}

/// As [`on_replicas`], with the replicas spread over `processes` processes of `per` replicas
/// each (threads joined over TCP on 127.0.0.1), one group per process spanning them all.
fn on_processes<B: AutodiffBackend>(
    kind: Kind,
    batch: &Batch,
    processes: usize,
    per: usize,
    combine: GradientCombine,
    device: &B::Device,
) -> (Vec<f64>, Vec<f64>) {
    use burn_dice::processes::{Processes, ProcessesConfig};
    use std::sync::Arc;
    let replicas = processes * per;
    let coordinator = format!(
        "127.0.0.1:{}",
        burn_dice_core::processes::testing::free_port()
    );
    let results: Vec<Vec<(f64, Vec<f64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..processes)
            .map(|p| {
                let config = ProcessesConfig::new(processes, p, coordinator.clone())
                    .with_timeout(Duration::from_secs(60));
                scope.spawn(move || {
                    let joined = Arc::new(Processes::join(&config).expect("join"));
                    let group = ReplicaGroup::new(format!("{kind:?} on {processes}x{per}"), per)
                        .with_combine(combine)
                        .with_processes(joined);
                    assert_eq!(group.total_replicas(), replicas);
                    run_replicas::<B>(kind, batch, &group, p * per, replicas, device)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("process thread"))
            .collect()
    });
    side_by_side(results.into_iter().flatten().collect())
}

/// Every loss on 2, 3 and 4 replicas against one device; returns the worst errors seen.
fn replicas_match_one_device<B: AutodiffBackend>(device: &B::Device, backend: &str) {
    spread_matches_one_device::<B>(device, backend, &[(1, 2), (1, 3), (1, 4)]);
}

/// Every loss on each `(processes, replicas per process)` of `spreads` against one device.
fn spread_matches_one_device<B: AutodiffBackend>(
    device: &B::Device,
    backend: &str,
    spreads: &[(usize, usize)],
) {
    let batch = Batch::new(7);
    let mut failures = Vec::new();
    for kind in Kind::ALL {
        let (value, grad) = one_device::<B>(kind, &batch, device);
        for &(processes, per) in spreads {
            let replicas = processes * per;
            // Dice-only losses in both gradient combinations; the compound ones, whose
            // cross-entropy or focal part is a mean over each replica's pixels, only where
            // each replica's loss is divided by the replicas (a sum would count it N times).
            let combines: &[GradientCombine] = if kind.dice_only() {
                &[GradientCombine::Sum, GradientCombine::Mean]
            } else {
                &[GradientCombine::Mean]
            };
            for &combine in combines {
                let (replica_values, replica_grad) = if processes == 1 {
                    on_replicas::<B>(kind, &batch, replicas, combine, device)
                } else {
                    on_processes::<B>(kind, &batch, processes, per, combine, device)
                };
                let mean = replica_values.iter().sum::<f64>() / replicas as f64;
                let mut value_err = rel_err(mean, value, 1e-3);
                if kind.dice_only() {
                    for v in &replica_values {
                        value_err = value_err.max(rel_err(*v, value, 1e-3));
                    }
                }
                let grad_err = grad_err(&replica_grad, &grad);
                println!(
                    "{backend} {kind:?} on {processes} x {per} ({combine:?}): value {value:.6} \
                     error {value_err:.1e}, gradient error {grad_err:.1e}"
                );
                if !(value_err <= TOLERANCE && grad_err <= TOLERANCE) {
                    failures.push(format!(
                        "{kind:?} on {processes} x {per} ({combine:?}): value {value_err:.1e}, \
                         gradient {grad_err:.1e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{backend}: {failures:#?}");
}

#[test]
fn ndarray_replicas_match_one_device() {
    replicas_match_one_device::<burn_dice_tests::NdArrayAutodiff>(&Default::default(), "ndarray");
}

#[test]
fn flex_replicas_match_one_device() {
    replicas_match_one_device::<burn_autodiff::Autodiff<burn_flex::Flex>>(
        &Default::default(),
        "flex",
    );
}

/// 2 processes of 1 and of 2 replicas, 3 processes of 1: every process's replicas in one
/// group per process, spanning the processes.
#[test]
fn flex_replicas_in_processes_match_one_device() {
    spread_matches_one_device::<burn_autodiff::Autodiff<burn_flex::Flex>>(
        &Default::default(),
        "flex",
        &[(2, 1), (2, 2), (3, 1)],
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_replicas_match_one_device() {
    if let Some(device) = burn_dice_tests::wgpu_device() {
        replicas_match_one_device::<burn_dice_tests::WgpuAutodiff>(&device, "wgpu");
    }
}

/// Without `batch` the group is not used: per-sample Dice needs no other replica, so a lone
/// replica of a group of 2 computes at once (no rendezvous, no wait).
#[test]
fn without_batch_the_group_is_not_used() {
    type B = burn_dice_tests::NdArrayAutodiff;
    let group = ReplicaGroup::new("unused", 2).with_timeout(Duration::from_secs(60));
    let batch = Batch::new(3);
    let (x, y) = batch.part::<B>(Kind::Dice, 0, 2, &Default::default());
    let Labels::Indices(y) = y else {
        unreachable!()
    };
    let loss = DiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .init::<B>(&Default::default());
    let alone = values(loss.forward(x.clone(), y.clone()));
    let start = Instant::now();
    let grouped = values(loss.with_replicas(group.clone()).forward(x, y));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(alone, grouped);
    assert_eq!(group.steps(), 0);
}

/// Whole steps only: a replica that sits out a step fails the others with the loss, the group
/// and the step named, after the timeout, not a hang; and the group stays failed.
#[test]
fn a_replica_that_sits_out_a_step_is_an_error_naming_it() {
    type B = burn_dice_tests::NdArrayAutodiff;
    let device = Default::default();
    let group = ReplicaGroup::new("train", 2).with_timeout(Duration::from_millis(300));
    let batch = Batch::new(5);
    let call = |group: &ReplicaGroup| {
        let (x, y) = batch.part::<B>(Kind::Dice, 0, 2, &device);
        loss(Kind::Dice, Some(group.clone()), x, &y)
    };
    // Step 1 on both replicas.
    std::thread::scope(|scope| {
        let other = scope.spawn(|| values(call(&group)));
        let mine = values(call(&group));
        assert_eq!(mine, other.join().unwrap());
    });
    // Step 2: the other replica has no batch left.
    let start = Instant::now();
    let message = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&group)))
        .map(|_| String::from("no panic"))
        .unwrap_or_else(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default()
        });
    let waited = start.elapsed();
    assert!(
        message.starts_with("DiceLoss: replica group `train`, step 2: 1 of 2 replicas"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&group)));
    let again = again
        .err()
        .and_then(|p| p.downcast_ref::<String>().cloned());
    assert!(
        again.is_some_and(|m| m.contains("step 2: the group failed earlier")),
        "a failed group fails every later call"
    );
}
