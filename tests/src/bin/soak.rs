//! The soak run: the properties of `burn_dice_tests::props` on many random cases, on
//! burn-flex and burn-ndarray, with a summary line (cases, failures, worst errors, time).
//!
//! `cargo run --release -p burn-dice-tests --bin soak -- --cases 1000000 [--seed S]
//! [--first K]`; `--first K` starts at the seed's case K, so that processes on different cores
//! can share one seed's cases (`--first 0 --cases 500000` and `--first 500000 --cases 500000`
//! are the cases of `--cases 1000000`). With
//! `--features wgpu` and `--wgpu`, on burn-wgpu instead (lavapipe on a CPU-only machine)
//! (not in CI). Each failure prints its case and the case's seed; `--case-seed S` reruns
//! that one case.

use std::time::Instant;

/// Without the `wgpu` feature `--wgpu` is an error.
#[cfg(not(feature = "wgpu"))]
fn check_wgpu(_: &burn_dice_tests::props::Case) -> Result<burn_dice_tests::props::Outcome, String> {
    Err("--wgpu needs the binary built with --features wgpu".into())
}
#[cfg(feature = "wgpu")]
use burn_dice_tests::props::check_wgpu;
use burn_dice_tests::props::{
    check, random_case, Outcome, GRAD_TOL, GRAD_TOL_SATURATED, VALUE_TOL,
};

/// The worst errors, each with its tolerance.
fn summary(worst: &Outcome) -> String {
    format!(
        "worst value error {:.2e} (tolerance {VALUE_TOL:.0e}), worst gradient error {:.2e} \
         (tolerance {GRAD_TOL:.0e}; saturated logits {:.2e}, ill-conditioned {:.2e}, tolerance \
         {GRAD_TOL_SATURATED:.0e})",
        worst.value_err, worst.grad_err, worst.grad_err_saturated, worst.grad_err_ill_conditioned
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => v.parse().ok(),
                }
                .unwrap_or_else(|| panic!("{name}: expected an integer, got {v}"))
            })
            .unwrap_or(default)
    };
    let (cases, seed, first) = (arg("--cases", 10_000), arg("--seed", 1), arg("--first", 0));
    let only = args
        .iter()
        .any(|a| a == "--case-seed")
        .then(|| arg("--case-seed", 0));
    let cases = if only.is_some() { 1 } else { cases };
    let wgpu = args.iter().any(|a| a == "--wgpu");
    let backends = if wgpu { "wgpu" } else { "flex and ndarray" };
    let started = Instant::now();
    let (mut failures, mut ill_conditioned) = (0u64, 0u64);
    let mut worst = Outcome::default();
    for k in first..first + cases {
        let case_seed = only.unwrap_or(seed.wrapping_mul(0x1000_0000_01B3) ^ k);
        let case = random_case(case_seed);
        let outcome = if wgpu {
            check_wgpu(&case)
        } else {
            check(&case)
        };
        match outcome {
            Ok(o) => {
                ill_conditioned += u64::from(o.grad_err_ill_conditioned > 0.0);
                worst = worst.merge(o);
            }
            Err(e) => {
                failures += 1;
                eprintln!("FAIL case seed {case_seed:#x}: {case:?}\n  {e}");
            }
        }
        let done = k + 1 - first;
        if done % 10_000 == 0 {
            eprintln!(
                "{done} cases (from case {first}), {failures} failures, {ill_conditioned} \
                 ill-conditioned, {}, {:.0} s",
                summary(&worst),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "soak: seed {seed}, cases {first}..{}, on {backends}: {failures} failures, \
         {ill_conditioned} ill-conditioned, {}, {:.0} s",
        first + cases,
        summary(&worst),
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
