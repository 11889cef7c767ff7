//! Parity with MONAI on the burn 0.22 line: every fixture of the repository's
//! `tests/fixtures/*.json` (the same files as the 0.21 line's), reduced, unreduced and
//! gradient, for each loss, to the 0.21 line's tolerances.

mod common;

use burn::tensor::Device;
use common::parity::{check_file, Kind};
use common::{dice_loss_fixtures, family_fixtures, FixtureFile};

fn check(kind: Kind, file: FixtureFile, min_cases: usize, device: &Device) {
    assert!(
        file.cases.len() >= min_cases,
        "{kind:?}: expected at least {min_cases} fixtures"
    );
    let s = check_file(kind, &file, device);
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

fn dice_loss_matches_monai(device: &Device) {
    check(Kind::Dice, dice_loss_fixtures(), 40, device);
}

fn generalized_dice_matches_monai(device: &Device) {
    check(
        Kind::GeneralizedDice,
        family_fixtures("generalized_dice"),
        15,
        device,
    );
}

fn tversky_matches_monai(device: &Device) {
    check(Kind::Tversky, family_fixtures("tversky"), 15, device);
}

fn dice_ce_matches_monai(device: &Device) {
    check(Kind::DiceCe, family_fixtures("dice_ce"), 15, device);
}

fn dice_focal_matches_monai(device: &Device) {
    check(Kind::DiceFocal, family_fixtures("dice_focal"), 15, device);
}

fn masked_dice_matches_reference(device: &Device) {
    check(Kind::MaskedDice, family_fixtures("masked_dice"), 10, device);
}

/// `soft_label` on every loss that has it (through the Dice part of DiceCE and DiceFocal),
/// against MONAI 1.6.
fn soft_label_matches_monai(device: &Device) {
    for (kind, name, min_cases) in [
        (Kind::Dice, "soft_dice", 20),
        (Kind::GeneralizedDice, "soft_generalized_dice", 10),
        (Kind::Tversky, "soft_tversky", 10),
        (Kind::DiceCe, "soft_dice_ce", 8),
        (Kind::DiceFocal, "soft_dice_focal", 8),
        (Kind::MaskedDice, "soft_masked_dice", 6),
    ] {
        check(kind, family_fixtures(name), min_cases, device);
    }
}

#[test]
fn dice_loss_matches_monai_on_every_device() {
    for (_, device) in common::devices() {
        dice_loss_matches_monai(&device);
    }
}

#[test]
fn generalized_dice_matches_monai_on_every_device() {
    for (_, device) in common::devices() {
        generalized_dice_matches_monai(&device);
    }
}

#[test]
fn tversky_matches_monai_on_every_device() {
    for (_, device) in common::devices() {
        tversky_matches_monai(&device);
    }
}

#[test]
fn dice_ce_matches_monai_on_every_device() {
    for (_, device) in common::devices() {
        dice_ce_matches_monai(&device);
    }
}

#[test]
fn dice_focal_matches_monai_on_every_device() {
    for (_, device) in common::devices() {
        dice_focal_matches_monai(&device);
    }
}

#[test]
fn masked_dice_matches_reference_on_every_device() {
    for (_, device) in common::devices() {
        masked_dice_matches_reference(&device);
    }
}

#[test]
fn soft_label_matches_monai_on_every_device() {
    for (_, device) in common::devices() {
        soft_label_matches_monai(&device);
    }
}
