//! Running the MONAI fixtures on a device.

use burn::tensor::{Device, Tensor};

use super::{grad_err, rel_err, values, worst_rel_err, Case, CaseTensors, FixtureFile};

/// Relative tolerance on losses (f32 against MONAI's float64).
pub const LOSS_TOL: f64 = 1e-5;
/// Tolerance on gradients, relative to the gradient's largest component (PyTorch's own f32
/// gradients are about 4e-7 off its float64 ones on these cases).
pub const GRAD_TOL: f64 = 1e-5;

/// Which loss a fixture file exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `DiceLoss`.
    Dice,
    /// `GeneralizedDiceLoss`.
    GeneralizedDice,
    /// `TverskyLoss`.
    Tversky,
    /// `DiceCELoss`.
    DiceCe,
    /// `DiceFocalLoss`.
    DiceFocal,
    /// `DiceLoss::forward_masked`.
    MaskedDice,
}

/// Errors of one case.
struct Errors {
    loss: f64,
    per_class: f64,
    grad: f64,
}

/// (reduced, unreduced) of the case's loss on `input`.
fn evaluate<const D: usize>(
    kind: Kind,
    case: &Case,
    input: Tensor<D>,
    device: &Device,
) -> (Tensor<1>, Tensor<2>) {
    let t = || case.target::<D>(device);
    match kind {
        Kind::Dice => {
            let l = case.dice_config().init(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::GeneralizedDice => {
            let l = case.generalized_dice_config().init(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::Tversky => {
            let l = case.tversky_config().init(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::DiceCe => {
            let l = case.dice_ce_config().init(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::DiceFocal => {
            let l = case.dice_focal_config().init(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::MaskedDice => {
            let l = case.dice_config().init(device);
            let m = || case.mask::<D>(device);
            (
                l.forward_masked(input.clone(), t(), m()),
                l.forward_masked_no_reduction(input, t(), m()),
            )
        }
    }
}

fn run_case<const D: usize>(kind: Kind, case: &Case, device: &Device) -> Errors {
    let input = case.input::<D>(device).require_grad();
    let (reduced, per_class) = evaluate::<D>(kind, case, input.clone(), device);
    assert_eq!(
        per_class.dims().to_vec(),
        case.per_class_shape,
        "{}: unreduced shape",
        case.name
    );
    let grads = reduced.backward();
    let grad = values(input.grad(&grads).expect("input gradient"));
    let reduced = values(reduced)[0];
    Errors {
        loss: rel_err(reduced, case.loss, 1e-6),
        per_class: worst_rel_err(&values(per_class), &case.per_class, 1e-6),
        grad: grad_err(&grad, &case.grad),
    }
}

/// The outcome of one fixture file on one backend.
#[derive(Debug, Clone)]
pub struct FileSummary {
    /// The loss.
    pub kind: String,
    /// Cases run.
    pub cases: usize,
    /// Worst relative loss error (reduced and unreduced).
    pub worst_loss: f64,
    /// Worst gradient error (relative to the largest component).
    pub worst_grad: f64,
    /// Cases over the tolerances.
    pub failures: Vec<String>,
}

/// Runs every case of `file` as loss `kind` on `device`.
pub fn check_file(kind: Kind, file: &FixtureFile, device: &Device) -> FileSummary {
    let mut failures = Vec::new();
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for case in &file.cases {
        let e = match case.shape.len() {
            3 => run_case::<3>(kind, case, device),
            4 => run_case::<4>(kind, case, device),
            5 => run_case::<5>(kind, case, device),
            r => panic!("{}: rank {r}", case.name),
        };
        worst_loss = worst_loss.max(e.loss).max(e.per_class);
        worst_grad = worst_grad.max(e.grad);
        if !(e.loss <= LOSS_TOL && e.per_class <= LOSS_TOL && e.grad <= GRAD_TOL) {
            failures.push(format!(
                "{}: loss {:.2e}, per-class {:.2e}, grad {:.2e}",
                case.name, e.loss, e.per_class, e.grad
            ));
        }
    }
    FileSummary {
        kind: format!("{kind:?}"),
        cases: file.cases.len(),
        worst_loss,
        worst_grad,
        failures,
    }
}
