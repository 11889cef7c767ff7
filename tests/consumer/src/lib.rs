//! What a user of burn-dice writes, compiled against the packaged crate (see Cargo.toml).

#[cfg(feature = "cpu")]
pub mod readme {
    //! The README's usage snippet, as a user's function.

    /// Runs the README snippet on burn-ndarray.
    pub fn snippet() {
        use burn::tensor::{Distribution, Int, Tensor};
        use burn_dice::{Activation, DiceLossConfig};
        type B = burn_autodiff::Autodiff<burn_ndarray::NdArray>;

        let device = Default::default();
        let loss = DiceLossConfig::new()
            .with_activation(Activation::Softmax)
            .init::<B>(&device);
        let logits = Tensor::<B, 4>::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let labels =
            Tensor::<B, 4, Int>::random([2, 1, 32, 32], Distribution::Uniform(0.0, 4.0), &device);
        let grads = loss.forward(logits.clone(), labels).backward();
        assert!(logits.grad(&grads).is_some());
        assert_eq!(
            burn_dice::kernels::path::<B>(),
            burn_dice::KernelPath::Cpu,
            "the default features bring the CPU kernels"
        );
    }
}

#[cfg(feature = "gpu")]
pub mod gpu {
    //! A burn-wgpu user's training step with the Learner snippet of the README.

    use burn::module::Module;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::PaddingConfig2d;
    use burn::optim::AdamConfig;
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use burn::tensor::{Int, Tensor};
    use burn::train::metric::LossMetric;
    use burn::train::{
        InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
    };
    use burn::data::dataloader::DataLoader;
    use burn_dice::metric::{DiceMetric, Prediction, SegmentationOutput};
    use burn_dice::{Activation, DiceLoss, DiceLossConfig};
    use std::sync::Arc;

    /// The backend a GPU user trains on.
    pub type Wgpu = burn_autodiff::Autodiff<burn_wgpu::Wgpu>;
    /// Its inner backend (validation).
    type Inner = <Wgpu as AutodiffBackend>::InnerBackend;

    /// A batch of images and class-index labels.
    #[derive(Clone, Debug)]
    pub struct SegBatch<B: Backend> {
        /// `[batch, 1, h, w]`.
        pub images: Tensor<B, 4>,
        /// `[batch, 1, h, w]`.
        pub labels: Tensor<B, 4, Int>,
    }

    /// A one-layer model.
    #[derive(Module, Debug)]
    pub struct Model<B: Backend> {
        conv: Conv2d<B>,
        loss: DiceLoss<B>,
    }

    impl<B: Backend> Model<B> {
        /// A model for `classes` classes.
        pub fn new(classes: usize, device: &B::Device) -> Self {
            Self {
                conv: Conv2dConfig::new([1, classes], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
                loss: DiceLossConfig::new()
                    .with_activation(Activation::Softmax)
                    .init(device),
            }
        }

        fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
            self.conv.forward(images)
        }
    }

    impl<B: AutodiffBackend> TrainStep for Model<B> {
        type Input = SegBatch<B>;
        type Output = SegmentationOutput<B>;
        fn step(&self, batch: SegBatch<B>) -> TrainOutput<SegmentationOutput<B>> {
            let logits = self.forward(batch.images);
            let loss = self.loss.forward(logits.clone(), batch.labels.clone());
            let output =
                SegmentationOutput::new(loss, logits, batch.labels, Prediction::Argmax, None);
            TrainOutput::new(self, output.loss.backward(), output)
        }
    }

    impl<B: Backend> InferenceStep for Model<B> {
        type Input = SegBatch<B>;
        type Output = SegmentationOutput<B>;
        fn step(&self, batch: SegBatch<B>) -> SegmentationOutput<B> {
            let logits = self.forward(batch.images);
            let loss = self.loss.forward(logits.clone(), batch.labels.clone());
            SegmentationOutput::new(loss, logits, batch.labels, Prediction::Argmax, None)
        }
    }

    /// Trains `model` on burn-wgpu with the README's Learner set-up.
    pub fn train(
        dir: &str,
        model: Model<Wgpu>,
        train_loader: Arc<dyn DataLoader<Wgpu, SegBatch<Wgpu>>>,
        valid_loader: Arc<dyn DataLoader<Inner, SegBatch<Inner>>>,
    ) {
        assert_eq!(burn_dice::kernels::path::<Wgpu>(), burn_dice::KernelPath::Cube);
        SupervisedTraining::new(dir, train_loader, valid_loader)
            .metric_valid_numeric(LossMetric::new())
            .metric_valid_numeric(DiceMetric::new().with_include_background(false))
            .metric_valid_numeric(DiceMetric::per_class(2))
            .num_epochs(10)
            .launch(Learner::new(model, AdamConfig::new().init(), 1e-3));
    }
}
