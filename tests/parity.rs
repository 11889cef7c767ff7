//! Parity with MONAI: every fixture of `tests/fixtures/*.json` (written by
//! `tests/fixtures/gen.py`), reduced, unreduced and gradient, for each loss.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use burn_dice_tests::{
    backend_tests, dice_loss_fixtures, family_fixtures, grad_err, rel_err, values, worst_rel_err,
    Case, FixtureFile,
};

/// Relative tolerance on losses (f32 against MONAI's float64).
const LOSS_TOL: f64 = 1e-5;
/// Tolerance on gradients, relative to the gradient's largest component (PyTorch's own f32
/// gradients are about 4e-7 off its float64 ones on these cases).
const GRAD_TOL: f64 = 1e-5;

/// Which loss a fixture file exercises.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Dice,
    GeneralizedDice,
    Tversky,
    DiceCe,
    DiceFocal,
    MaskedDice,
}

struct Errors {
    loss: f64,
    per_class: f64,
    grad: f64,
}

/// (reduced, unreduced) of the case's loss on `input`.
fn evaluate<B: AutodiffBackend, const D: usize>(
    kind: Kind,
    case: &Case,
    input: Tensor<B, D>,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let t = || case.target::<B, D>(device);
    match kind {
        Kind::Dice => {
            let l = case.dice_config().init::<B>(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::GeneralizedDice => {
            let l = case.generalized_dice_config().init::<B>(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::Tversky => {
            let l = case.tversky_config().init::<B>(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::DiceCe => {
            let l = case.dice_ce_config().init::<B>(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::DiceFocal => {
            let l = case.dice_focal_config().init::<B>(device);
            (
                l.forward(input.clone(), t()),
                l.forward_no_reduction(input, t()),
            )
        }
        Kind::MaskedDice => {
            let l = case.dice_config().init::<B>(device);
            let m = || case.mask::<B, D>(device);
            (
                l.forward_masked(input.clone(), t(), m()),
                l.forward_masked_no_reduction(input, t(), m()),
            )
        }
    }
}

fn run_case<B: AutodiffBackend, const D: usize>(
    kind: Kind,
    case: &Case,
    device: &B::Device,
) -> Errors {
    let input = case.input::<B, D>(device).require_grad();
    let (reduced, per_class) = evaluate::<B, D>(kind, case, input.clone(), device);
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

fn check_file<B: AutodiffBackend>(
    kind: Kind,
    file: FixtureFile,
    min_cases: usize,
    device: &B::Device,
) {
    assert!(
        file.cases.len() >= min_cases,
        "{kind:?}: expected at least {min_cases} fixtures"
    );
    let mut failures = Vec::new();
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for case in &file.cases {
        let e = match case.shape.len() {
            3 => run_case::<B, 3>(kind, case, device),
            4 => run_case::<B, 4>(kind, case, device),
            5 => run_case::<B, 5>(kind, case, device),
            r => panic!("{}: rank {r}", case.name),
        };
        worst_loss = worst_loss.max(e.loss).max(e.per_class);
        worst_grad = worst_grad.max(e.grad);
        if e.loss > LOSS_TOL || e.per_class > LOSS_TOL || e.grad > GRAD_TOL {
            failures.push(format!(
                "{}: loss {:.2e}, per-class {:.2e}, grad {:.2e}",
                case.name, e.loss, e.per_class, e.grad
            ));
        }
    }
    println!(
        "{kind:?}: {} MONAI {} fixtures, worst relative loss error {worst_loss:.2e}, worst gradient error {worst_grad:.2e}",
        file.cases.len(),
        file.monai_version
    );
    assert!(
        failures.is_empty(),
        "{kind:?} fixtures off MONAI:\n{}",
        failures.join("\n")
    );
}

fn dice_loss_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check_file::<B>(Kind::Dice, dice_loss_fixtures(), 40, device);
}

fn generalized_dice_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check_file::<B>(
        Kind::GeneralizedDice,
        family_fixtures("generalized_dice"),
        15,
        device,
    );
}

fn tversky_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check_file::<B>(Kind::Tversky, family_fixtures("tversky"), 15, device);
}

fn dice_ce_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check_file::<B>(Kind::DiceCe, family_fixtures("dice_ce"), 15, device);
}

fn dice_focal_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check_file::<B>(Kind::DiceFocal, family_fixtures("dice_focal"), 15, device);
}

fn masked_dice_matches_reference<B: AutodiffBackend>(device: &B::Device) {
    check_file::<B>(Kind::MaskedDice, family_fixtures("masked_dice"), 10, device);
}

backend_tests!(
    dice_loss_matches_monai,
    generalized_dice_matches_monai,
    tversky_matches_monai,
    dice_ce_matches_monai,
    dice_focal_matches_monai,
    masked_dice_matches_reference,
);
