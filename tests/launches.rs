//! The CubeCL kernels each loss launches per call, forward and backward, held where they are:
//! a change that adds a launch fails here. Needs the `wgpu` feature. One test in its own
//! binary: the launch counter is process-wide, so nothing else may launch kernels meanwhile.
//!
//! The targets: at most 3 launches forward and 1 backward for Dice, GeneralizedDice
//! and Tversky; 4 and 1 for DiceCE and DiceFocal. Every loss takes 2 and 1: DiceCE and
//! DiceFocal sum their cross-entropy or focal term in the statistics' pass, and write the
//! input's gradient of both terms in one backward launch.

#![cfg(feature = "wgpu")]

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_autodiff::Autodiff;
use burn_dice::kernels::launches;
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};
use burn_dice_tests::{wgpu_device, WgpuAutodiff};

/// burn-wgpu without its fusion layer: a kernel is launched in the call that makes it.
type WgpuCube = burn_cubecl::CubeBackend<burn_wgpu::WgpuRuntime, f32, i32, u32>;

type Loss<'a, B> = Box<dyn Fn(Tensor<B, 4>) -> Tensor<B, 1> + 'a>;

/// `(loss, forward launches, backward launches)` of one call of each loss, checks on.
fn launches_per_call<B: AutodiffBackend>(device: &B::Device) -> Vec<(&'static str, u64, u64)> {
    let labels =
        || Tensor::<B, 4, Int>::random([2, 1, 16, 16], Distribution::Uniform(0.0, 3.0), device);
    let losses: Vec<(&str, Loss<B>)> = vec![
        ("DiceLoss", {
            let loss = DiceLossConfig::new()
                .with_activation(Activation::Softmax)
                .init::<B>(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("GeneralizedDiceLoss", {
            let loss = GeneralizedDiceLossConfig::new().init::<B>(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("TverskyLoss", {
            let loss = TverskyLossConfig::new().init::<B>(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("DiceCELoss", {
            let loss = DiceCELossConfig::new().init::<B>(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
        ("DiceFocalLoss", {
            let loss = DiceFocalLossConfig::new().init::<B>(device);
            Box::new(move |x| loss.forward(x, labels()))
        }),
    ];
    let mut counts = Vec::new();
    for (name, forward) in &losses {
        let x = Tensor::<B, 4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), device)
            .require_grad();
        B::sync(device).expect("sync");
        let before = launches();
        let loss = forward(x.clone());
        B::sync(device).expect("sync");
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
    let expected = [
        ("DiceLoss", 2, 1),
        ("GeneralizedDiceLoss", 2, 1),
        ("TverskyLoss", 2, 1),
        ("DiceCELoss", 2, 1),
        ("DiceFocalLoss", 2, 1),
    ];
    let Some(device) = wgpu_device() else { return };
    let plain = launches_per_call::<Autodiff<WgpuCube>>(&device);
    assert_eq!(
        plain, expected,
        "(loss, forward, backward) launches without fusion"
    );
    let fused = launches_per_call::<WgpuAutodiff>(&device);
    assert_eq!(
        fused, expected,
        "(loss, forward, backward) launches with fusion"
    );
}
