//! What a burn 0.22 user of burn-dice writes, compiled against the packaged crate (see
//! Cargo.toml).

/// The 0.22 README snippet, as a user's function.
pub fn snippet() {
    use burn::tensor::{DType, Device, Distribution, Int, Tensor};
    use burn_dice::{Activation, DiceLossConfig};

    let device = Device::flex().autodiff();
    let logits = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device)
        .require_grad();
    let labels = Tensor::<4, Int>::zeros([2, 1, 16, 16], &device);
    let loss = DiceLossConfig::new()
        .with_activation(Activation::Softmax)
        .init(&device)
        .forward(logits.clone(), labels);
    let grads = loss.backward();
    assert_eq!(logits.grad(&grads).unwrap().dims(), [2, 3, 16, 16]);
    assert_eq!(
        burn_dice::kernels::path(&device, DType::F32),
        burn_dice::KernelPath::Cpu,
        "the default features bring the Flex kernels"
    );
}
