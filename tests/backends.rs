//! burn-wgpu against burn-ndarray on random inputs of every rank: every loss (1e-5 relative on
//! values, 1e-4 on gradients) and the Dice metric. Needs the `wgpu` feature.

#![cfg(feature = "wgpu")]

use burn_dice_tests::crosscheck::compare_backends;
use burn_dice_tests::{wgpu_device, NdArrayAutodiff, WgpuAutodiff};

#[test]
fn wgpu_matches_ndarray() {
    let Some(device) = wgpu_device() else { return };
    let results = compare_backends::<NdArrayAutodiff, WgpuAutodiff>(&Default::default(), &device);
    for r in &results {
        println!(
            "{:<40} value {:.2e}  gradient {:.2e}",
            r.name, r.value_err, r.grad_err
        );
    }
    let bad: Vec<_> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.name.clone())
        .collect();
    assert!(bad.is_empty(), "wgpu differs from ndarray: {bad:?}");
}
