//! No NaN or infinity, in any loss or its gradient, on the inputs that break hand-written Dice
//! losses: all-background and all-foreground batches, logits of ±1e4, a single pixel.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig,
};
use burn_dice_tests::{backend_tests, values};

type LossFn<B> = Box<dyn Fn(Tensor<B, 4>, DiceTarget<B, 4>) -> Tensor<B, 1>>;

/// Every loss of the family, in a few configurations, as boxed closures.
fn losses<B: AutodiffBackend>(device: &B::Device) -> Vec<(&'static str, LossFn<B>)> {
    let softmax = DiceLossConfig::new().with_activation(Activation::Softmax);
    let d1 = softmax.init::<B>(device);
    let d2 = softmax
        .clone()
        .with_log_loss(true)
        .with_jaccard(true)
        .with_include_background(false)
        .init::<B>(device);
    let d3 = softmax
        .clone()
        .with_squared_pred(true)
        .with_batch(true)
        .init::<B>(device);
    let g1 = GeneralizedDiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .init::<B>(device);
    let g2 = GeneralizedDiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .with_batch(true)
        .with_include_background(false)
        .init::<B>(device);
    let t1 = TverskyLossConfig::new()
        .with_activation(Activation::Softmax)
        .with_alpha(0.0)
        .with_beta(1.0)
        .with_gamma(4.0 / 3.0)
        .init::<B>(device);
    let t2 = TverskyLossConfig::new()
        .with_activation(Activation::Softmax)
        .with_alpha(1.0)
        .with_beta(0.0)
        .with_gamma(3.0)
        .init::<B>(device);
    let c1 = DiceCELossConfig::new()
        .with_dice(softmax.clone())
        .with_ce_weight(Some(vec![0.2, 1.0, 3.0]))
        .with_label_smoothing(0.1)
        .init::<B>(device);
    let f1 = DiceFocalLossConfig::new()
        .with_dice(softmax)
        .with_alpha(Some(0.25))
        .init::<B>(device);
    vec![
        ("dice", Box::new(move |x, t| d1.forward(x, t))),
        (
            "dice log/jaccard/no-bg",
            Box::new(move |x, t| d2.forward(x, t)),
        ),
        ("dice squared/batch", Box::new(move |x, t| d3.forward(x, t))),
        ("generalized dice", Box::new(move |x, t| g1.forward(x, t))),
        (
            "generalized dice batch/no-bg",
            Box::new(move |x, t| g2.forward(x, t)),
        ),
        (
            "focal tversky a0 b1",
            Box::new(move |x, t| t1.forward(x, t)),
        ),
        (
            "focal tversky a1 b0",
            Box::new(move |x, t| t2.forward(x, t)),
        ),
        ("dice+ce", Box::new(move |x, t| c1.forward(x, t))),
        ("dice+focal", Box::new(move |x, t| f1.forward(x, t))),
    ]
}

fn assert_finite<B: AutodiffBackend>(
    case: &str,
    device: &B::Device,
    logits: Tensor<B::InnerBackend, 4>,
    labels: Tensor<B, 4, Int>,
) {
    for (name, loss) in losses::<B>(device) {
        let x = Tensor::<B, 4>::from_inner(logits.clone()).require_grad();
        let l = loss(x.clone(), labels.clone().into());
        let grads = l.clone().backward();
        let value = values(l)[0];
        let grad = values(x.grad(&grads).expect("gradient"));
        assert!(value.is_finite(), "{name}, {case}: loss {value}");
        assert!(
            grad.iter().all(|g| g.is_finite()),
            "{name}, {case}: non-finite gradient"
        );
    }
}

fn all_background_and_all_foreground<B: AutodiffBackend>(device: &B::Device) {
    let shape = [2, 3, 6, 6];
    let logits = Tensor::random(shape, Distribution::Normal(0.0, 3.0), device);
    for class in [0, 1, 2] {
        let labels = Tensor::<B, 4, Int>::full([2, 1, 6, 6], class, device);
        assert_finite::<B>(
            &format!("every pixel class {class}"),
            device,
            logits.clone(),
            labels,
        );
    }
}

fn extreme_logits<B: AutodiffBackend>(device: &B::Device) {
    let shape = [2, 3, 4, 4];
    let signs = Tensor::<B::InnerBackend, 4>::random(shape, Distribution::Bernoulli(0.5), device)
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    let labels = Tensor::<B, 4>::random([2, 1, 4, 4], Distribution::Uniform(0.0, 3.0), device)
        .int()
        .clamp(0, 2);
    for scale in [1e4f32, -1e4] {
        assert_finite::<B>(
            &format!("logits ±{scale}"),
            device,
            signs.clone().mul_scalar(scale),
            labels.clone(),
        );
    }
    // Confident and right, and confident and wrong, at ±1e4.
    let onehot = labels
        .clone()
        .inner()
        .squeeze_dim::<3>(1)
        .one_hot::<4>(3)
        .permute([0, 3, 1, 2])
        .float();
    assert_finite::<B>(
        "right at 1e4",
        device,
        onehot.clone().mul_scalar(2e4).sub_scalar(1e4),
        labels.clone(),
    );
    assert_finite::<B>(
        "wrong at 1e4",
        device,
        onehot.mul_scalar(-2e4).add_scalar(1e4),
        labels,
    );
}

fn single_pixel<B: AutodiffBackend>(device: &B::Device) {
    let logits = Tensor::<B::InnerBackend, 4>::from_floats([[[[0.3]], [[-1.2]], [[2.0]]]], device);
    for class in [0, 2] {
        let labels = Tensor::<B, 4, Int>::full([1, 1, 1, 1], class, device);
        assert_finite::<B>(
            &format!("one pixel, class {class}"),
            device,
            logits.clone(),
            labels,
        );
    }
}

backend_tests!(
    all_background_and_all_foreground,
    extreme_logits,
    single_pixel
);
