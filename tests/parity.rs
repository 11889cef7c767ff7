//! Parity with MONAI: every fixture of `tests/fixtures/dice_loss.json` (written by
//! `tests/fixtures/gen.py`), forward, unreduced and gradient.

use burn::tensor::backend::AutodiffBackend;
use burn_dice_tests::{
    backend_tests, dice_loss_fixtures, grad_err, rel_err, values, worst_rel_err, Case,
};

/// Relative tolerance on losses (f32 against MONAI's float64).
const LOSS_TOL: f64 = 1e-5;
/// Tolerance on gradients, relative to the gradient's largest component (PyTorch's own f32
/// gradients are about 4e-7 off its float64 ones on these cases).
const GRAD_TOL: f64 = 1e-5;

struct Errors {
    loss: f64,
    per_class: f64,
    grad: f64,
}

fn run_case<B: AutodiffBackend, const D: usize>(case: &Case, device: &B::Device) -> Errors {
    let loss = case.dice_config().init::<B>(device);
    let input = case.input::<B, D>(device).require_grad();
    let per_class = loss.forward_no_reduction(input.clone(), case.target::<B, D>(device));
    assert_eq!(
        per_class.dims().to_vec(),
        case.per_class_shape,
        "{}: unreduced shape",
        case.name
    );
    let reduced = loss.forward(input.clone(), case.target::<B, D>(device));
    let grads = reduced.backward();
    let grad = values(input.grad(&grads).expect("input gradient"));
    let reduced = values(reduced)[0];
    Errors {
        loss: rel_err(reduced, case.loss, 1e-6),
        per_class: worst_rel_err(&values(per_class), &case.per_class, 1e-6),
        grad: grad_err(&grad, &case.grad),
    }
}

fn monai_fixtures_match<B: AutodiffBackend>(device: &B::Device) {
    let file = dice_loss_fixtures();
    assert!(file.cases.len() >= 40, "expected at least 40 fixtures");
    let mut failures = Vec::new();
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for case in &file.cases {
        let e = match case.shape.len() {
            3 => run_case::<B, 3>(case, device),
            4 => run_case::<B, 4>(case, device),
            5 => run_case::<B, 5>(case, device),
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
        "{} MONAI {} fixtures: worst relative loss error {worst_loss:.2e}, worst gradient error {worst_grad:.2e}",
        file.cases.len(),
        file.monai_version
    );
    assert!(
        failures.is_empty(),
        "fixtures off MONAI:\n{}",
        failures.join("\n")
    );
}

backend_tests!(monai_fixtures_match);
