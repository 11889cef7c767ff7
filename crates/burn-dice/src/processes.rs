//! Data parallelism across processes: a [`ReplicaGroup`](crate::ReplicaGroup) and the
//! gradients summed over the processes of a run.
//!
//! [`Processes`] (from burn-dice-core) joins the processes at a coordinator and sums `f64`
//! values across them over TCP; give it to a group with
//! [`ReplicaGroup::with_processes`](crate::ReplicaGroup::with_processes) and batch Dice's
//! statistics are summed over every process's replicas. [`ModuleSums`] adds what training
//! needs besides the loss: the sum of a step's gradients ([`ModuleSums::sum_gradients`]) and
//! the coordinator's initial weights in every process ([`ModuleSums::share_module`]). See
//! [`burn_dice_core::processes`] for the topology, the rules (same calls in the same order; a
//! late or departed process fails the step everywhere, never a hang), and why this is not
//! burn-collective: its 0.21 global `all_reduce` completes one call per registration.
//!
//! ```no_run
//! use std::sync::Arc;
//! use burn_dice::{DiceLossConfig, GradientCombine, ReplicaGroup};
//! use burn_dice::processes::{ModuleSums, Processes, ProcessesConfig};
//! # type B = burn_autodiff::Autodiff<burn_ndarray::NdArray<f32>>;
//! # let device = Default::default();
//! # let model: burn::nn::Linear<B> = burn::nn::LinearConfig::new(3, 2).init(&device);
//! # let x = burn::tensor::Tensor::<B, 2>::ones([1, 3], &device);
//! // In each of 2 processes, with its own rank (0 or 1):
//! let rank = 0;
//! let processes = Arc::new(Processes::join(&ProcessesConfig::new(2, rank, "127.0.0.1:7700"))?);
//! let model = processes.share_module(model)?; // rank 0's weights everywhere
//! let group = ReplicaGroup::new("train", 1)
//!     .with_combine(GradientCombine::Mean)
//!     .with_processes(processes.clone());
//! let loss = DiceLossConfig::new().with_batch(true).init::<B>(&device).with_replicas(group);
//! // Each step: this process's loss divided by the processes, its gradients, then their sum.
//! let probs = burn::tensor::activation::sigmoid(model.forward(x)).reshape([1, 1, 2]);
//! let value = loss.forward(probs.clone(), probs.ones_like()).div_scalar(2.0);
//! let grads = burn::optim::GradientsParams::from_grads(value.backward(), &model);
//! let grads = processes.sum_gradients(1, &model, grads)?;
//! # Ok::<(), String>(())
//! ```

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

pub use burn_dice_core::processes::{Processes, ProcessesConfig};
pub use burn_dice_core::replicas::ProcessSum;

/// The sums of a module across the processes of a run: its gradients at each step, its
/// weights once at the start. Implemented for [`Processes`].
pub trait ModuleSums {
    /// Sums this step's gradients over every process: what the optimizer step of a
    /// data-parallel run needs (PyTorch's DDP averages; this sums, so divide each process's
    /// loss by the number of processes for a mean, as the U-Net example does). One call of
    /// [`Processes::sum`] with every gradient of `module`'s float parameters, in the module's
    /// visiting order (the same in every process: burn's parameter ids are drawn at random
    /// per process, so they cannot pair the gradients), converted to `f64` and back to each
    /// gradient's dtype ([`Processes::sum_parts`]). A parameter without a gradient must have
    /// none in every process. `step` labels the call in errors.
    ///
    /// # Errors
    /// As [`Processes::sum`], and when the processes' modules or gradients differ (another
    /// number of values, a gradient in some processes only).
    fn sum_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        step: u64,
        module: &M,
        grads: GradientsParams,
    ) -> Result<GradientsParams, String>;

    /// The coordinator's values of `module`'s float parameters, in every process: call it
    /// once, after every process has built its model, so that all start from the same
    /// weights whatever their seeds. One [`Processes::share`] of every parameter, labelled
    /// step 0 in errors.
    ///
    /// # Errors
    /// As [`Processes::sum`], and when the processes' modules have different sizes.
    fn share_module<B: Backend, M: Module<B>>(&self, module: M) -> Result<M, String>;
}

impl ModuleSums for Processes {
    fn sum_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        step: u64,
        module: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams, String> {
        let mut gather = GatherGradients::<B> {
            grads: &grads,
            values: Vec::new(),
            present: Vec::new(),
            _b: std::marker::PhantomData,
        };
        module.visit(&mut gather);
        let GatherGradients {
            values, present, ..
        } = gather;
        let summed = self.sum_parts(step, &values, &present)?;
        let mut spread = SpreadGradients::<B> {
            grads: &mut grads,
            values: &summed,
            _b: std::marker::PhantomData,
        };
        module.visit(&mut spread);
        Ok(grads)
    }

    fn share_module<B: Backend, M: Module<B>>(&self, module: M) -> Result<M, String> {
        let mut gather = GatherValues::<B> {
            values: Vec::new(),
            _b: std::marker::PhantomData,
        };
        module.visit(&mut gather);
        let shared = self.share(&gather.values)?;
        let mut spread = SpreadValues::<B> {
            values: &shared,
            _b: std::marker::PhantomData,
        };
        Ok(module.map(&mut spread))
    }
}

fn to_f64<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 data after convert")
}

/// `values[..n]` as a tensor shaped and typed like `like`, on its device; advances `values`.
fn take_like<B: Backend, const D: usize>(values: &mut &[f64], like: &Tensor<B, D>) -> Tensor<B, D> {
    let shape = like.shape();
    let (head, tail) = values.split_at(shape.num_elements());
    *values = tail;
    Tensor::from_data(
        TensorData::new(head.to_vec(), shape),
        (&like.device(), like.dtype()),
    )
}

struct GatherGradients<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    values: Vec<f64>,
    present: Vec<bool>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GatherGradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = self.grads.get::<B::InnerBackend, D>(param.id);
        self.present.push(grad.is_some());
        if let Some(grad) = grad {
            self.values.extend(to_f64(grad));
        }
    }
}

struct SpreadGradients<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    values: &'a [f64],
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SpreadGradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let summed = take_like(&mut self.values, &grad);
            self.grads.register(param.id, summed);
        }
    }
}

struct GatherValues<B: Backend> {
    values: Vec<f64>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for GatherValues<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.values.extend(to_f64(param.val()));
    }
}

struct SpreadValues<'a, B: Backend> {
    values: &'a [f64],
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleMapper<B> for SpreadValues<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tracked = tensor.is_require_grad();
        let mut shared = take_like(&mut self.values, &tensor);
        if tracked {
            shared = shared.require_grad();
        }
        Param::from_mapped_value(id, shared, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn_dice_core::processes::testing::on_processes;
    use std::time::Duration;

    type B = burn_ndarray::NdArray<f32>;
    type A = burn_autodiff::Autodiff<B>;

    #[test]
    fn gradients_are_summed_and_weights_shared_across_processes() {
        let device = Default::default();
        let results = on_processes(2, Duration::from_secs(20), move |rank, processes| {
            // Different seeds: different initial weights until shared.
            <A as Backend>::seed(&device, 7 + rank as u64);
            let model: Linear<A> = LinearConfig::new(3, 2).init(&device);
            let model = processes.share_module(model).unwrap();
            let input = Tensor::<A, 2>::from_floats([[1.0, 2.0, 3.0]], &device)
                .mul_scalar(rank as f32 + 1.0);
            let loss = model.forward(input).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let summed = processes.sum_gradients(1, &model, grads).unwrap();
            let weight = summed.get::<B, 2>(model.weight.id).unwrap();
            (to_f64(model.weight.val().inner()), to_f64(weight))
        });
        assert_eq!(
            results[0].0, results[1].0,
            "same weights after share_module"
        );
        // d(sum(x W + b))/dW = xᵀ 1: rank 0's x = [1, 2, 3], rank 1's = 2x, summed 3x.
        let expected = vec![3.0, 3.0, 6.0, 6.0, 9.0, 9.0];
        assert_eq!(results[0].1, expected);
        assert_eq!(results[1].1, expected);
    }
}
