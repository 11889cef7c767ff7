//! The benchmark cases of the burn 0.22 line (the 0.21 line's `benches/common`, ported): the three cases of `shared/anchors/bench_dice.py`,
//! the losses, and the fused/generic switch.

#![allow(dead_code, missing_docs)]

use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_dice::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget,
    GeneralizedDiceLossConfig, TverskyLossConfig,
};

/// One of the anchor's three inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// a) sigmoid, dense 0/1 target, `[8, 1, 256, 256]`.
    SigmoidDense,
    /// b) softmax, class-index target, `[8, 4, 128, 128]`.
    SoftmaxIndices,
    /// c) softmax, class-index target, `[2, 4, 64, 64, 64]`.
    SoftmaxIndices3d,
    /// d) softmax, class-index target, `[2, 4, 128, 128, 128]` (a GPU's case: the 0.21
    /// line's `docs/gpu.md` case d).
    SoftmaxIndices3dLarge,
}

impl Case {
    pub const ALL: [Case; 3] = [
        Case::SigmoidDense,
        Case::SoftmaxIndices,
        Case::SoftmaxIndices3d,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::SigmoidDense => "a sigmoid dense [8,1,256,256]",
            Case::SoftmaxIndices => "b softmax indices [8,4,128,128]",
            Case::SoftmaxIndices3d => "c softmax indices 3-D [2,4,64,64,64]",
            Case::SoftmaxIndices3dLarge => "d softmax indices 3-D [2,4,128,128,128]",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Case::SigmoidDense => "a",
            Case::SoftmaxIndices => "b",
            Case::SoftmaxIndices3d => "c",
            Case::SoftmaxIndices3dLarge => "d",
        }
    }

    pub fn activation(self) -> Activation {
        match self {
            Case::SigmoidDense => Activation::Sigmoid,
            _ => Activation::Softmax,
        }
    }

    /// Logits elements.
    pub fn elements(self) -> usize {
        match self {
            Case::SigmoidDense => 8 * 256 * 256,
            Case::SoftmaxIndices => 8 * 4 * 128 * 128,
            Case::SoftmaxIndices3d => 2 * 4 * 64 * 64 * 64,
            Case::SoftmaxIndices3dLarge => 2 * 4 * 128 * 128 * 128,
        }
    }
}

/// The losses benchmarked, each configured as MONAI's defaults for the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Dice,
    /// `DiceLoss` with `soft_label` (the cost of the option; the targets stay the case's).
    DiceSoftLabel,
    GeneralizedDice,
    Tversky,
    DiceCe,
    DiceFocal,
}

impl Loss {
    pub const ALL: [Loss; 6] = [
        Loss::Dice,
        Loss::DiceSoftLabel,
        Loss::GeneralizedDice,
        Loss::Tversky,
        Loss::DiceCe,
        Loss::DiceFocal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Loss::Dice => "DiceLoss",
            Loss::DiceSoftLabel => "DiceLoss(soft_label)",
            Loss::GeneralizedDice => "GeneralizedDiceLoss",
            Loss::Tversky => "TverskyLoss",
            Loss::DiceCe => "DiceCELoss",
            Loss::DiceFocal => "DiceFocalLoss",
        }
    }
}

/// The input and target of a case, seeded.
pub struct Inputs<const D: usize> {
    pub logits: Tensor<D>,
    pub target: DiceTarget<D>,
}

pub fn inputs<const D: usize>(case: Case, device: &Device) -> Inputs<D> {
    device.seed(1234);
    let dims: Vec<usize> = match case {
        Case::SigmoidDense => vec![8, 1, 256, 256],
        Case::SoftmaxIndices => vec![8, 4, 128, 128],
        Case::SoftmaxIndices3d => vec![2, 4, 64, 64, 64],
        Case::SoftmaxIndices3dLarge => vec![2, 4, 128, 128, 128],
    };
    assert_eq!(dims.len(), D, "rank of {case:?}");
    let shape: [usize; D] = dims.clone().try_into().expect("rank checked");
    let logits = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let target = match case {
        Case::SigmoidDense => {
            DiceTarget::Dense(Tensor::random(shape, Distribution::Bernoulli(0.5), device))
        }
        _ => {
            let mut label_shape = shape;
            label_shape[1] = 1;
            DiceTarget::Indices(
                Tensor::<D>::random(label_shape, Distribution::Uniform(0.0, 4.0), device)
                    .floor()
                    .int(),
            )
        }
    };
    Inputs { logits, target }
}

fn target_clone<const D: usize>(t: &DiceTarget<D>) -> DiceTarget<D> {
    match t {
        DiceTarget::Dense(t) => DiceTarget::Dense(t.clone()),
        DiceTarget::Indices(t) => DiceTarget::Indices(Tensor::<D, Int>::clone(t)),
    }
}

/// A loss function of the case, ready to call on logits.
pub type LossFn<const D: usize> = Box<dyn Fn(Tensor<D>) -> Tensor<1>>;

pub fn loss_fn<const D: usize>(
    loss: Loss,
    case: Case,
    target: &DiceTarget<D>,
    device: &Device,
) -> LossFn<D> {
    let dice = DiceLossConfig::new().with_activation(case.activation());
    let t = target_clone(target);
    match loss {
        Loss::Dice => {
            let l = dice.init(device);
            Box::new(move |x| l.forward(x, target_clone(&t)))
        }
        Loss::DiceSoftLabel => {
            let l = dice.with_soft_label(true).init(device);
            Box::new(move |x| l.forward(x, target_clone(&t)))
        }
        Loss::GeneralizedDice => {
            let l = GeneralizedDiceLossConfig::new()
                .with_activation(case.activation())
                .init(device);
            Box::new(move |x| l.forward(x, target_clone(&t)))
        }
        Loss::Tversky => {
            let l = TverskyLossConfig::new()
                .with_activation(case.activation())
                .init(device);
            Box::new(move |x| l.forward(x, target_clone(&t)))
        }
        Loss::DiceCe => {
            let l = DiceCELossConfig::new().with_dice(dice).init(device);
            Box::new(move |x| l.forward(x, target_clone(&t)))
        }
        Loss::DiceFocal => {
            let l = DiceFocalLossConfig::new().with_dice(dice).init(device);
            Box::new(move |x| l.forward(x, target_clone(&t)))
        }
    }
}

/// Runs `body` on the generic burn-ops path (`generic`) or with the fused kernels.
pub fn on_path(generic: bool, body: &mut dyn FnMut()) {
    if generic {
        burn_dice::kernels::generic_only(body)
    } else {
        body()
    }
}

/// Forward only (the input does not require a gradient), waiting for the value.
pub fn forward<const D: usize>(f: &LossFn<D>, x: &Tensor<D>) -> f32 {
    f(x.clone()).into_scalar::<f32>()
}

/// Forward and backward with respect to the input.
pub fn forward_backward<const D: usize>(f: &LossFn<D>, x: &Tensor<D>) -> burn::tensor::Gradients {
    let x = x.clone().require_grad();
    f(x).backward()
}
