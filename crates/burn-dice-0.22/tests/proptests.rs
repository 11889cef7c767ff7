//! A short property run on the burn 0.22 line: random cases of every rank, class count, target
//! kind and option (the burn-free core's `random_case`, the generator of the 0.21 line's
//! property tests and soak), checked by `common::props::check` on burn-flex: the kernels ≡
//! the generic path ≡ the f64 reference, gradients against f64, batch splitting, class
//! permutation and the metric's counts. `BURN_DICE_PROPERTY_CASES` sets how many cases run
//! (default below); the long runs stay on the 0.21 line (its proptest suite and soak).

mod common;

use common::props::{check, random_case, zero_at_the_target};

/// Cases of one run, unless `BURN_DICE_PROPERTY_CASES` says otherwise.
const DEFAULT_CASES: u64 = 1024;

fn cases() -> u64 {
    std::env::var("BURN_DICE_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

#[test]
fn every_path_agrees_and_every_property_holds() {
    let mut worst = common::props::Outcome::default();
    for k in 0..cases() {
        let seed = 0x0022_0000_0000_0000 | k;
        let case = random_case(seed);
        match check(&case) {
            Ok(outcome) => worst = worst.merge(outcome),
            Err(e) => panic!("case {seed:#x} ({case:?}): {e}"),
        }
    }
    println!("{} cases: {worst:?}", cases());
}

#[test]
fn soft_label_scores_zero_at_the_target() {
    for k in 0..cases() {
        let seed = 0x0022_1000_0000_0000 | k;
        let case = random_case(seed);
        if let Err(e) = zero_at_the_target(&case) {
            panic!("case {seed:#x} ({case:?}): {e}");
        }
    }
}

/// The 0.21 line's soak failures (see its `tests/proptests.rs`), kept as regressions here too.
#[test]
fn the_soak_regressions_of_the_0_21_line_pass() {
    for seed in [
        0x5295_1002_0d5f_a35a,
        0x5295_3002_0d54_0476,
        0x5295_3002_0d50_b8f4,
    ] {
        check(&random_case(seed)).unwrap_or_else(|e| panic!("{seed:#x}: {e}"));
    }
}
