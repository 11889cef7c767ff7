//! The CubeCL kernels each loss launches per call on burn-wgpu, forward and backward, held
//! where they are (as on the 0.1 line): a change that adds a launch fails here. Needs the
//! `wgpu` feature. One test in its own binary: the launch counter is process-wide, so nothing
//! else may launch kernels meanwhile.
//!
//! Every loss takes 2 forward (the statistics' pass, the sum of its tiles) and 1 backward:
//! DiceCE and DiceFocal sum their cross-entropy or focal term in the statistics' pass and
//! write the input's gradient of both terms in one backward launch.

#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_dice::kernels::{launches, path, KernelPath};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};
use common::wgpu_device;

type Loss<'a> = Box<dyn Fn(Tensor<4>) -> Tensor<1> + 'a>;

/// `(loss, forward launches, backward launches)` of one call of each loss, checks on.
fn launches_per_call(device: &Device) -> Vec<(&'static str, u64, u64)> {
    let labels =
        || Tensor::<4, Int>::random([2, 1, 16, 16], Distribution::Uniform(0.0, 3.0), device);
    let losses: Vec<(&str, Loss)> = vec![
        ("DiceLoss", {
            let loss = DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .init(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("GeneralizedDiceLoss", {
            let loss = GeneralizedDiceLossConfig::new().init(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("TverskyLoss", {
            let loss = TverskyLossConfig::new().init(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("DiceCELoss", {
            let loss = DiceCELossConfig::new().init(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("DiceFocalLoss", {
            let loss = DiceFocalLossConfig::new().init(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
    ];
    let mut counts = Vec::new();
    for (name, forward) in &losses {
        let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), device)
            .require_grad();
        device.sync().expect("sync");
        let before = launches();
        let loss = forward(x.clone());
        device.sync().expect("sync");
        let fwd = launches() - before;
        let before = launches();
        let grads = loss.backward();
        let _ = x.grad(&grads).expect("a gradient").into_data();
        counts.push((*name, fwd, launches() - before));
    }
    counts
}

#[test]
fn launches_per_call_do_not_grow() {
    let Some(device) = wgpu_device() else { return };
    let device = device.autodiff();
    assert_eq!(path(&device, burn::tensor::DType::F32), KernelPath::Cube);
    let expected = [
        ("DiceLoss", 2, 1),
        ("GeneralizedDiceLoss", 2, 1),
        ("TverskyLoss", 2, 1),
        ("DiceCELoss", 2, 1),
        ("DiceFocalLoss", 2, 1),
    ];
    assert_eq!(
        launches_per_call(&device),
        expected,
        "(loss, forward, backward) launches"
    );
}
