//! The learning-rate schedule of a run: cosine annealing (Loshchilov & Hutter, "SGDR", ICLR
//! 2017) from the learning rate down to a floor over a fixed number of steps, without restarts,
//! then the floor.
//!
//! burn's `CosineAnnealingLrScheduler` restarts at the top after its last step, and its length
//! is fixed when it is built. A run resumed with a different `--epochs` would rebuild it with
//! another length and jump to another point of the curve; this one keeps the length of the run
//! being resumed (`TrainConfig::schedule_epochs`) and holds the floor for any epochs past it.
//! Its record is the step count, as burn's, so checkpoints of either load into the other.

use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// Cosine from `max_lr` to `min_lr` over `num_iters` steps, then `min_lr`.
#[derive(Debug, Clone)]
pub struct RunSchedule {
    max_lr: LearningRate,
    min_lr: LearningRate,
    num_iters: usize,
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
            current_iter: usize::MAX,
        })
    }
}

impl LrScheduler for RunSchedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.current_iter = self.current_iter.wrapping_add(1);
        let k = self.current_iter.min(self.num_iters) as f64;
        let progress = k / self.num_iters as f64;
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
        let mut whole = RunSchedule::new(3e-3, 3e-3 / 50.0, 40).unwrap();
        let mut first = whole.clone();
        for _ in 0..17 {
            whole.step();
            first.step();
        }
        let record = first.to_record::<B>();
        let mut resumed = RunSchedule::new(3e-3, 3e-3 / 50.0, 40)
            .unwrap()
            .load_record::<B>(record);
        for _ in 0..30 {
            assert_eq!(whole.step(), resumed.step());
        }
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
