//! The learning-rate schedule of a run: an optional linear warm-up (Goyal et al., "Accurate,
//! Large Minibatch SGD", 2017) from `max_lr / warmup` up to the learning rate, then cosine
//! annealing (Loshchilov & Hutter, "SGDR", ICLR 2017) from the learning rate down to a floor
//! over the rest of a fixed number of steps, without restarts, then the floor.
//!
//! burn's `CosineAnnealingLrScheduler` restarts at the top after its last step, and its length
//! is fixed when it is built. A run resumed with a different `--epochs` would rebuild it with
//! another length and jump to another point of the curve; this one keeps the length of the run
//! being resumed (`TrainConfig::schedule_epochs`) and holds the floor for any epochs past it.
//! Its record is the step count, as burn's, so checkpoints of either load into the other.

use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// Linear warm-up over `warmup_iters` steps, cosine from `max_lr` to `min_lr` over the rest of
/// `num_iters` steps, then `min_lr`.
#[derive(Debug, Clone)]
pub struct RunSchedule {
    max_lr: LearningRate,
    min_lr: LearningRate,
    num_iters: usize,
    warmup_iters: usize,
    /// Steps taken so far, minus one (`usize::MAX` before the first).
    current_iter: usize,
}

impl RunSchedule {
    /// A schedule from `max_lr` down to `min_lr` over `num_iters` steps (`max_lr == min_lr`:
    /// a constant rate).
    pub fn new(
        max_lr: LearningRate,
        min_lr: LearningRate,
        num_iters: usize,
    ) -> Result<Self, String> {
        if !(max_lr.is_finite() && max_lr > 0.0) {
            return Err(format!(
                "the learning rate must be finite and > 0, got {max_lr}"
            ));
        }
        if !(min_lr.is_finite() && (0.0..=max_lr).contains(&min_lr)) {
            return Err(format!(
                "the final learning rate must be in [0, {max_lr}], got {min_lr}"
            ));
        }
        if num_iters == 0 {
            return Err("the schedule needs at least one step".into());
        }
        Ok(Self {
            max_lr,
            min_lr,
            num_iters,
            warmup_iters: 0,
            current_iter: usize::MAX,
        })
    }

    /// The same schedule with its first `warmup_iters` steps (at most all but one) rising
    /// linearly, `max_lr · k / warmup_iters` at step `k = 1, …`, and the cosine over the rest.
    pub fn with_warmup(mut self, warmup_iters: usize) -> Self {
        self.warmup_iters = warmup_iters.min(self.num_iters - 1);
        self
    }
}

impl LrScheduler for RunSchedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.current_iter = self.current_iter.wrapping_add(1);
        let k = self.current_iter.min(self.num_iters);
        if k < self.warmup_iters {
            return self.max_lr * (k + 1) as f64 / self.warmup_iters as f64;
        }
        let progress = (k - self.warmup_iters) as f64 / (self.num_iters - self.warmup_iters) as f64;
        self.min_lr
            + 0.5 * (self.max_lr - self.min_lr) * (1.0 + (progress * std::f64::consts::PI).cos())
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.current_iter
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.current_iter = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;

    type B = burn_flex::Flex;

    #[test]
    fn equals_burns_cosine_over_its_length_then_holds_the_floor() {
        let ours = RunSchedule::new(1e-2, 2e-4, 10).unwrap();
        let burns = CosineAnnealingLrSchedulerConfig::new(1e-2, 10)
            .with_min_lr(2e-4)
            .init()
            .unwrap();
        let (mut ours, mut burns) = (ours, burns);
        for step in 0..=10 {
            let (a, b) = (ours.step(), burns.step());
            assert!((a - b).abs() < 1e-12, "step {step}: {a} vs {b}");
        }
        // burn's restarts at the top here; ours stays at the floor.
        for _ in 0..25 {
            assert!((ours.step() - 2e-4).abs() < 1e-12);
        }
    }

    #[test]
    fn resumes_where_it_was_from_its_record() {
        let mut whole = RunSchedule::new(3e-3, 3e-3 / 50.0, 40)
            .unwrap()
            .with_warmup(5);
        let mut first = whole.clone();
        for _ in 0..17 {
            whole.step();
            first.step();
        }
        let record = first.to_record::<B>();
        let mut resumed = RunSchedule::new(3e-3, 3e-3 / 50.0, 40)
            .unwrap()
            .with_warmup(5)
            .load_record::<B>(record);
        for _ in 0..30 {
            assert_eq!(whole.step(), resumed.step());
        }
    }

    #[test]
    fn warms_up_linearly_then_follows_the_cosine_over_the_rest() {
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-15)
        };
        let mut s = RunSchedule::new(1e-2, 2e-4, 14).unwrap().with_warmup(4);
        let warm: Vec<f64> = (0..4).map(|_| s.step()).collect();
        assert!(close(&warm, &[2.5e-3, 5e-3, 7.5e-3, 1e-2]), "{warm:?}");
        // Then the whole cosine of the remaining 10 steps, from the peak to the floor.
        let mut cosine = RunSchedule::new(1e-2, 2e-4, 10).unwrap();
        for step in 4..=14 {
            let (a, b) = (s.step(), cosine.step());
            assert!((a - b).abs() < 1e-15, "step {step}: {a} vs {b}");
        }
        assert_eq!(s.step(), 2e-4);
        // A warm-up longer than the run leaves the cosine its last step.
        let mut short = RunSchedule::new(1e-2, 2e-4, 3).unwrap().with_warmup(10);
        let lrs: Vec<f64> = (0..4).map(|_| short.step()).collect();
        assert!(close(&lrs, &[5e-3, 1e-2, 1e-2, 2e-4]), "{lrs:?}");
    }

    #[test]
    fn constant_when_both_ends_are_equal() {
        let mut s = RunSchedule::new(1e-3, 1e-3, 5).unwrap();
        for _ in 0..12 {
            assert_eq!(s.step(), 1e-3);
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let err = RunSchedule::new(-1.0, 0.0, 5).unwrap_err();
        assert!(err.contains("learning rate") && err.contains("-1"), "{err}");
        let err = RunSchedule::new(1e-3, 1e-2, 5).unwrap_err();
        assert!(
            err.contains("final learning rate") && err.contains("0.01"),
            "{err}"
        );
        let err = RunSchedule::new(1e-3, 1e-4, 0).unwrap_err();
        assert!(err.contains("one step"), "{err}");
    }
}
