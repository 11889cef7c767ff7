//! Sums across data-parallel replicas: the rendezvous behind burn-dice's `ReplicaGroup`.
//!
//! Under data parallelism every replica sees only its share of the batch, so a Dice loss with
//! `batch = true` (nnU-Net's "batch Dice": the statistics `I`, `P`, `T` summed over the whole
//! batch before the ratio) would become a per-replica Dice: another loss, with other gradients
//! on the small or empty structures batch Dice exists for. nnU-Net v2 sums its tp/fp/fn over the
//! DDP ranks before the ratio (`nnunetv2/training/loss/dice.py`, `ddp=True`); a
//! [`ReplicaGroup`] is that sum for replicas that run as threads of one process (burn-train's
//! multi-device strategy, or a custom loop with a thread per device).
//!
//! # Steps
//! Each call of [`ReplicaGroup::all_reduce`] is one *step* of the group: it blocks until every
//! replica of the group has made its call of that step, then returns to each of them the
//! element-wise sum of all their values. The `k`-th call of every replica belongs to step `k`:
//! the group counts calls, not replica identities, so the replicas need no rank.
//!
//! **Whole steps only.** Every replica must make the same calls, step by step: a replica that
//! sits out a step (the last, partial step of an epoch where the data ran out for it) leaves the
//! others waiting. They wait [`ReplicaGroup::timeout`] (default 60 s), then fail with a
//! [`ReplicaError`] that names the group and the step, and so does every later call: the group
//! is broken, never hung. Split the data so that every replica gets the same number of batches
//! (the U-Net example trims its training set to a multiple of the replicas).
//!
//! # Across processes
//! A group is one process's replicas. Give it a [`ProcessSum`] with
//! [`ReplicaGroup::with_processes`] and every step becomes two sums: the process's replicas add
//! their values here, then the last of them to arrive hands the process's sum to the
//! [`ProcessSum`], which adds it to the other processes' sums (any transport that can sum a
//! few numbers across processes: MPI, a socket, burn-collective), and every replica
//! of every process gets the total. The same rules hold: whole steps only, in every process,
//! and a process that does not make the step within the timeout fails the step with a
//! [`ReplicaError`] that names the group and the step.
//!
//! # Sums
//! The values are added in `f64` in the order the replicas arrive. Sums of `f32` statistics
//! of like magnitude are exact in `f64`, so the result does not depend on the order in
//! practice; it is rounded once, when a line converts it back to the tensor's dtype.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How the training loop combines the replicas' gradients into one optimizer step, which fixes
/// the scale of each replica's share of the summed statistics' gradient.
///
/// Every replica gets the same global value. Its input gradient is the one-device gradient of
/// that value restricted to its own samples, times [`ReplicaGroup::gradient_scale`]: 1 for
/// [`Sum`](Self::Sum), the number of replicas for [`Mean`](Self::Mean), so that the combined
/// gradient equals one device's gradient of the whole batch either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradientCombine {
    /// The replicas' gradients are added (burn-train's multi-device strategy, a plain
    /// all-reduce sum) and each replica backpropagates its loss as it is.
    #[default]
    Sum,
    /// Each replica divides its loss by the number of replicas before the backward pass, so
    /// that the added gradients are a mean (the U-Net example, PyTorch's DDP).
    Mean,
}

/// Why a sum across the replicas failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaError {
    /// The group's name.
    pub group: String,
    /// The 1-based step of the group the call belonged to.
    pub step: u64,
    /// What went wrong.
    pub kind: ReplicaErrorKind,
}

/// What went wrong in a [`ReplicaError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaErrorKind {
    /// Not every replica made its call of the step within the timeout.
    Timeout {
        /// Replicas that made their call.
        arrived: usize,
        /// Replicas of the group.
        replicas: usize,
        /// How long the call waited.
        waited: Duration,
    },
    /// A replica's values have another length than the first replica's of the step (replicas
    /// with different numbers of classes, or different losses on one group).
    Length {
        /// The length of the step's first values.
        expected: usize,
        /// The length of this replica's values.
        got: usize,
    },
    /// The sum across processes ([`ProcessSum`]) failed; the message is its reason.
    Processes(String),
    /// An earlier step of the group failed; the message is that failure's.
    Broken(String),
}

/// The cross-process half of a [`ReplicaGroup`]: adds this process's sums to every other
/// process's (see the [module docs](self#across-processes)).
///
/// Called once per step and process, by the last of the process's replicas to arrive, with the
/// sum of the process's replicas. Implementations must return within `timeout`, with an error
/// rather than a hang when another process does not make the step.
pub trait ProcessSum: Send + Sync {
    /// The number of processes taking part, this one included.
    fn processes(&self) -> usize;

    /// This process's call of `step` (1-based, the group's step): the element-wise sum of
    /// `values` over every process, or why it failed.
    ///
    /// # Errors
    /// When a process does not make the step within `timeout`, or the transport fails.
    fn sum(&self, step: u64, values: &[f64], timeout: Duration) -> Result<Vec<f64>, String>;
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { group, step, kind } = self;
        match kind {
            ReplicaErrorKind::Timeout {
                arrived,
                replicas,
                waited,
            } => write!(
                f,
                "replica group `{group}`, step {step}: {arrived} of {replicas} replicas made \
                 the step within {:.1} s. Every replica must make the same steps (whole steps \
                 only): give each the same number of batches, and the same losses with \
                 `batch = true`",
                waited.as_secs_f64()
            ),
            ReplicaErrorKind::Length { expected, got } => write!(
                f,
                "replica group `{group}`, step {step}: a replica summed {got} values where \
                 the step's first replica summed {expected}; the replicas of a group must \
                 compute the same loss on inputs with the same number of classes"
            ),
            ReplicaErrorKind::Processes(cause) => write!(
                f,
                "replica group `{group}`, step {step}: the sum across processes failed: {cause}"
            ),
            ReplicaErrorKind::Broken(cause) => write!(
                f,
                "replica group `{group}`, step {step}: the group failed earlier ({cause})"
            ),
        }
    }
}

impl std::error::Error for ReplicaError {}

/// A group of data-parallel replicas that sum their statistics before the ratio.
///
/// Make one per training run with the number of replicas, and give a clone to the loss of
/// every replica (the clones share one rendezvous). See the [module docs](self) for the rule
/// every replica must follow (whole steps only) and what a missing replica does.
#[derive(Clone)]
pub struct ReplicaGroup {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    replicas: usize,
    timeout: Duration,
    combine: GradientCombine,
    processes: Option<Arc<dyn ProcessSum>>,
    state: Mutex<State>,
    turn: Condvar,
}

impl Shared {
    /// Breaks the group with `err`: every waiting replica wakes to it, every later call fails
    /// with it. Returns `err`, for the replica that found it.
    fn break_with(&self, state: &mut State, err: ReplicaError) -> ReplicaError {
        state.broken = Some(err.to_string());
        self.turn.notify_all();
        err
    }
}

#[derive(Default)]
struct State {
    /// Steps completed.
    completed: u64,
    /// Replicas that made their call of the step in progress.
    arrived: usize,
    /// The running sum of the step in progress.
    sums: Vec<f64>,
    /// The sums of the last completed step, read by its waiting replicas.
    last: Arc<Vec<f64>>,
    /// The first failure, after which every call fails.
    broken: Option<String>,
}

impl ReplicaGroup {
    /// The timeout of [`ReplicaGroup::new`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// A group of `replicas` replicas, named `name` in its errors.
    ///
    /// # Panics
    /// When `replicas` is 0.
    pub fn new(name: impl Into<String>, replicas: usize) -> Self {
        let name = name.into();
        assert!(
            replicas > 0,
            "ReplicaGroup `{name}`: `replicas` must be at least 1, got 0"
        );
        Self {
            shared: Arc::new(Shared {
                name,
                replicas,
                timeout: Self::DEFAULT_TIMEOUT,
                combine: GradientCombine::Sum,
                processes: None,
                state: Mutex::default(),
                turn: Condvar::new(),
            }),
        }
    }

    /// Sets how long a replica waits for the others at a step before the step fails.
    ///
    /// # Panics
    /// When the group was cloned already (settings are made before the group is shared).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.settings("with_timeout").timeout = timeout;
        self
    }

    /// Sets how the training loop combines the replicas' gradients (default
    /// [`GradientCombine::Sum`]).
    ///
    /// # Panics
    /// When the group was cloned already.
    pub fn with_combine(mut self, combine: GradientCombine) -> Self {
        self.settings("with_combine").combine = combine;
        self
    }

    /// Makes the group span processes: each step's sum over this process's replicas is added
    /// to the other processes' through `processes` (see the
    /// [module docs](self#across-processes)).
    ///
    /// # Panics
    /// When the group was cloned already.
    pub fn with_processes(mut self, processes: Arc<dyn ProcessSum>) -> Self {
        self.settings("with_processes").processes = Some(processes);
        self
    }

    fn settings(&mut self, method: &str) -> &mut Shared {
        let name = self.shared.name.clone();
        Arc::get_mut(&mut self.shared).unwrap_or_else(|| {
            panic!("ReplicaGroup `{name}`: call `{method}` before the group is cloned")
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The number of replicas in this process.
    pub fn replicas(&self) -> usize {
        self.shared.replicas
    }

    /// The number of processes the group spans: 1 without [`with_processes`](Self::with_processes).
    pub fn processes(&self) -> usize {
        self.shared.processes.as_ref().map_or(1, |p| p.processes())
    }

    /// The number of replicas in all the group's processes (each process has as many as this
    /// one: [`replicas`](Self::replicas) × [`processes`](Self::processes)).
    pub fn total_replicas(&self) -> usize {
        self.shared.replicas * self.processes()
    }

    /// How long a replica waits for the others at a step.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// How the replicas' gradients are combined.
    pub fn combine(&self) -> GradientCombine {
        self.shared.combine
    }

    /// The factor on each replica's share of the statistics' gradient (see
    /// [`GradientCombine`]): 1, or the number of replicas of all the group's processes for
    /// [`GradientCombine::Mean`].
    pub fn gradient_scale(&self) -> f64 {
        match self.shared.combine {
            GradientCombine::Sum => 1.0,
            GradientCombine::Mean => self.total_replicas() as f64,
        }
    }

    /// The steps the group has completed.
    pub fn steps(&self) -> u64 {
        self.lock().completed
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A replica that panicked while holding the lock left the state consistent: every
        // update below is made before anything that can panic.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This replica's call of the next step: blocks until every replica has made its call,
    /// then returns the element-wise sum of all their `values`.
    ///
    /// # Errors
    /// When a replica does not make its call within [`timeout`](Self::timeout), when the
    /// replicas' values differ in length, and at every call after a failure.
    pub fn all_reduce(&self, values: &[f64]) -> Result<Vec<f64>, ReplicaError> {
        let shared = &*self.shared;
        let mut state = self.lock();
        let step = state.completed + 1;
        let error = |kind| ReplicaError {
            group: shared.name.clone(),
            step,
            kind,
        };
        if let Some(cause) = &state.broken {
            return Err(error(ReplicaErrorKind::Broken(cause.clone())));
        }
        if state.arrived == 0 {
            state.sums.clear();
            state.sums.resize(values.len(), 0.0);
        } else if state.sums.len() != values.len() {
            let err = error(ReplicaErrorKind::Length {
                expected: state.sums.len(),
                got: values.len(),
            });
            return Err(shared.break_with(&mut state, err));
        }
        for (sum, value) in state.sums.iter_mut().zip(values) {
            *sum += value;
        }
        state.arrived += 1;
        if state.arrived == shared.replicas {
            let mut sums = std::mem::take(&mut state.sums);
            if let Some(processes) = &shared.processes {
                // The lock is held across the transport: this process's other replicas are
                // waiting for this very step, and nothing else may start before it ends.
                let total = processes
                    .sum(step, &sums, shared.timeout)
                    .and_then(|total| {
                        if total.len() == sums.len() {
                            Ok(total)
                        } else {
                            Err(format!(
                                "it returned {} values for the {} it was given",
                                total.len(),
                                sums.len()
                            ))
                        }
                    });
                match total {
                    Ok(total) => sums = total,
                    Err(cause) => {
                        let err = error(ReplicaErrorKind::Processes(cause));
                        return Err(shared.break_with(&mut state, err));
                    }
                }
            }
            let sums = Arc::new(sums);
            state.last = Arc::clone(&sums);
            state.arrived = 0;
            state.completed = step;
            shared.turn.notify_all();
            return Ok(sums.to_vec());
        }
        let start = Instant::now();
        loop {
            let waited = start.elapsed();
            if waited >= shared.timeout {
                let err = error(ReplicaErrorKind::Timeout {
                    arrived: state.arrived,
                    replicas: shared.replicas,
                    waited,
                });
                return Err(shared.break_with(&mut state, err));
            }
            state = shared
                .turn
                .wait_timeout(state, shared.timeout - waited)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            // The step is complete once the count has moved past it: its sums are `last`
            // until every replica (this one included) has made its call of the next step.
            if state.completed >= step {
                return Ok(state.last.to_vec());
            }
            if let Some(cause) = &state.broken {
                return Err(error(ReplicaErrorKind::Broken(cause.clone())));
            }
        }
    }
}

impl fmt::Debug for ReplicaGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaGroup")
            .field("name", &self.shared.name)
            .field("replicas", &self.shared.replicas)
            .field("timeout", &self.shared.timeout)
            .field("combine", &self.shared.combine)
            .field("processes", &self.processes())
            .finish()
    }
}

/// A group of replicas in one process stands for processes too: each of its replicas is then
/// one process's [`ProcessSum`] (a thread standing for a process, in tests; or groups nested
/// in one process).
impl ProcessSum for ReplicaGroup {
    fn processes(&self) -> usize {
        self.total_replicas()
    }

    fn sum(&self, _step: u64, values: &[f64], _timeout: Duration) -> Result<Vec<f64>, String> {
        self.all_reduce(values).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// Runs `steps` calls on each of `replicas` threads, replica `r` giving `[r, 10·r + step]`.
    fn run(group: &ReplicaGroup, steps: usize) -> Vec<Vec<Vec<f64>>> {
        thread::scope(|scope| {
            let handles: Vec<_> = (0..group.replicas())
                .map(|r| {
                    let group = group.clone();
                    scope.spawn(move || {
                        (0..steps)
                            .map(|s| group.all_reduce(&[r as f64, (10 * r + s) as f64]).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_replica_gets_the_sum_of_each_step() {
        for replicas in 1..=4 {
            let group = ReplicaGroup::new("t", replicas);
            let steps = 50;
            let out = run(&group, steps);
            let n = replicas as f64;
            let rank_sum = n * (n - 1.0) / 2.0;
            for per_replica in &out {
                for (s, sums) in per_replica.iter().enumerate() {
                    assert_eq!(sums, &vec![rank_sum, 10.0 * rank_sum + n * s as f64]);
                }
            }
            assert_eq!(group.steps(), steps as u64);
        }
    }

    #[test]
    fn a_missing_replica_is_an_error_naming_the_group_and_step() {
        let group = ReplicaGroup::new("unet", 2).with_timeout(Duration::from_millis(100));
        // Two complete steps, then replica 1 sits out the third.
        thread::scope(|scope| {
            let other = group.clone();
            let sitter = scope.spawn(move || {
                for _ in 0..2 {
                    other.all_reduce(&[1.0]).unwrap();
                }
            });
            for _ in 0..2 {
                assert_eq!(group.all_reduce(&[1.0]).unwrap(), vec![2.0]);
            }
            sitter.join().unwrap();
        });
        let start = Instant::now();
        let err = group.all_reduce(&[1.0]).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(err.step, 3);
        let message = err.to_string();
        assert!(
            message.contains("replica group `unet`, step 3: 1 of 2 replicas"),
            "{message}"
        );
        // Broken from then on, at once.
        let again = group.all_reduce(&[1.0]).unwrap_err();
        assert!(matches!(again.kind, ReplicaErrorKind::Broken(_)), "{again}");
        assert!(again.to_string().contains("failed earlier"), "{again}");
    }

    #[test]
    fn values_of_another_length_are_an_error() {
        let group = ReplicaGroup::new("g", 2).with_timeout(Duration::from_secs(10));
        let (a, b) = thread::scope(|scope| {
            let other = group.clone();
            let first = scope.spawn(move || other.all_reduce(&[1.0, 2.0]));
            // Whichever comes second sees the mismatch; the first is released by the break.
            let second = group.all_reduce(&[1.0]);
            (first.join().unwrap(), second)
        });
        let errors = [a.unwrap_err(), b.unwrap_err()];
        assert!(
            errors
                .iter()
                .any(|e| matches!(e.kind, ReplicaErrorKind::Length { .. })),
            "{errors:?}"
        );
        assert!(errors.iter().all(|e| e.step == 1));
    }

    #[test]
    fn gradient_scale_follows_the_combine() {
        let group = ReplicaGroup::new("g", 3);
        assert_eq!(group.gradient_scale(), 1.0);
        let group = ReplicaGroup::new("g", 3).with_combine(GradientCombine::Mean);
        assert_eq!(group.gradient_scale(), 3.0);
    }

    /// Two "processes" (groups of 2 replicas, on threads) joined by a 2-replica group standing
    /// for the transport: every replica of both gets the sum over all four.
    #[test]
    fn a_group_across_processes_sums_every_replica_of_every_process() {
        let link = ReplicaGroup::new("link", 2);
        let processes: Vec<ReplicaGroup> = (0..2)
            .map(|_| {
                ReplicaGroup::new("unet", 2)
                    .with_combine(GradientCombine::Mean)
                    .with_processes(Arc::new(link.clone()))
            })
            .collect();
        assert_eq!(processes[0].total_replicas(), 4);
        assert_eq!(processes[0].gradient_scale(), 4.0);
        let steps = 20;
        let out: Vec<Vec<Vec<f64>>> = thread::scope(|scope| {
            let handles: Vec<_> = processes
                .iter()
                .enumerate()
                .flat_map(|(p, group)| {
                    (0..2).map(move |r| {
                        let group = group.clone();
                        let rank = (2 * p + r) as f64;
                        scope.spawn(move || {
                            (0..steps)
                                .map(|s| group.all_reduce(&[rank, s as f64]).unwrap())
                                .collect::<Vec<_>>()
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for per_replica in &out {
            for (s, sums) in per_replica.iter().enumerate() {
                assert_eq!(sums, &vec![6.0, 4.0 * s as f64]);
            }
        }
        assert_eq!(link.steps(), steps as u64);
    }

    /// A transport that fails names the group and step, and breaks the group.
    #[test]
    fn a_failed_sum_across_processes_is_an_error_naming_the_group_and_step() {
        struct Down;
        impl ProcessSum for Down {
            fn processes(&self) -> usize {
                2
            }
            fn sum(&self, step: u64, _: &[f64], timeout: Duration) -> Result<Vec<f64>, String> {
                Err(format!(
                    "process 1 did not make step {step} within {timeout:?}"
                ))
            }
        }
        let group = ReplicaGroup::new("unet", 2)
            .with_timeout(Duration::from_secs(10))
            .with_processes(Arc::new(Down));
        let errors = thread::scope(|scope| {
            let other = group.clone();
            let first = scope.spawn(move || other.all_reduce(&[1.0]));
            let second = group.all_reduce(&[1.0]);
            [first.join().unwrap(), second]
        });
        for err in errors {
            let err = err.unwrap_err();
            assert_eq!(err.step, 1);
            assert!(
                err.to_string()
                    .starts_with("replica group `unet`, step 1: "),
                "{err}"
            );
        }
        let again = group.all_reduce(&[1.0]).unwrap_err();
        assert!(
            again.to_string().contains("process 1 did not make step 1"),
            "{again}"
        );
    }

    #[test]
    #[should_panic(expected = "ReplicaGroup `g`: `replicas` must be at least 1, got 0")]
    fn zero_replicas_are_refused() {
        let _ = ReplicaGroup::new("g", 0);
    }

    #[test]
    #[should_panic(expected = "call `with_timeout` before the group is cloned")]
    fn settings_after_cloning_are_refused() {
        let group = ReplicaGroup::new("g", 2);
        let _clone = group.clone();
        let _ = group.with_timeout(Duration::from_secs(1));
    }
}
