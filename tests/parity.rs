//! Parity with MONAI: every fixture of `tests/fixtures/*.json` (written by
//! `tests/fixtures/gen.py`), reduced, unreduced and gradient, for each loss.

use burn::tensor::backend::AutodiffBackend;
use burn_dice_tests::parity::{check_file, Kind};
use burn_dice_tests::{backend_tests, dice_loss_fixtures, family_fixtures, FixtureFile};

fn check<B: AutodiffBackend>(kind: Kind, file: FixtureFile, min_cases: usize, device: &B::Device) {
    assert!(
        file.cases.len() >= min_cases,
        "{kind:?}: expected at least {min_cases} fixtures"
    );
    let s = check_file::<B>(kind, &file, device);
    println!(
        "{kind:?}: {} MONAI {} fixtures, worst relative loss error {:.2e}, worst gradient error {:.2e}",
        s.cases, file.monai_version, s.worst_loss, s.worst_grad
    );
    assert!(
        s.failures.is_empty(),
        "{kind:?} fixtures off MONAI:\n{}",
        s.failures.join("\n")
    );
}

fn dice_loss_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check::<B>(Kind::Dice, dice_loss_fixtures(), 40, device);
}

fn generalized_dice_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check::<B>(
        Kind::GeneralizedDice,
        family_fixtures("generalized_dice"),
        15,
        device,
    );
}

fn tversky_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check::<B>(Kind::Tversky, family_fixtures("tversky"), 15, device);
}

fn dice_ce_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check::<B>(Kind::DiceCe, family_fixtures("dice_ce"), 15, device);
}

fn dice_focal_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    check::<B>(Kind::DiceFocal, family_fixtures("dice_focal"), 15, device);
}

fn masked_dice_matches_reference<B: AutodiffBackend>(device: &B::Device) {
    check::<B>(Kind::MaskedDice, family_fixtures("masked_dice"), 10, device);
}

/// `soft_label` on every loss that has it (through the Dice part of DiceCE and DiceFocal),
/// against MONAI 1.6.
fn soft_label_matches_monai<B: AutodiffBackend>(device: &B::Device) {
    for (kind, name, min_cases) in [
        (Kind::Dice, "soft_dice", 20),
        (Kind::GeneralizedDice, "soft_generalized_dice", 10),
        (Kind::Tversky, "soft_tversky", 10),
        (Kind::DiceCe, "soft_dice_ce", 8),
        (Kind::DiceFocal, "soft_dice_focal", 8),
        (Kind::MaskedDice, "soft_masked_dice", 6),
    ] {
        check::<B>(kind, family_fixtures(name), min_cases, device);
    }
}

backend_tests!(
    dice_loss_matches_monai,
    generalized_dice_matches_monai,
    tversky_matches_monai,
    dice_ce_matches_monai,
    dice_focal_matches_monai,
    masked_dice_matches_reference,
    soft_label_matches_monai,
);
