//! The whole wgpu check in one binary, for a GPU machine without a Rust toolchain (see
//! `scripts/gpu-check.sh`): MONAI parity of every loss on wgpu, wgpu against ndarray for every
//! loss and the metric, the loss benchmark cases, the reference U-Net's training step, and a
//! short U-Net training on the shapes data set. Writes a JSON report (first argument, default
//! `gpu-report.json`) and exits non-zero if any check fails.

use std::time::Instant;

use burn_dice_tests::crosscheck::{compare_backends, time_loss_cases};
use burn_dice_tests::parity::{check_file, Kind};
use burn_dice_tests::{
    dice_loss_fixtures, family_fixtures, wgpu_device, NdArrayAutodiff, WgpuAutodiff,
};
use serde_json::json;
use unet::cli::BenchArgs;
use unet::data::shapes::Shapes;
use unet::data::SegmentationData;
use unet::model::UNetConfig;
use unet::training::{train, LossKind, TrainConfig};

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gpu-report.json".into());
    let epochs: usize = std::env::args()
        .nth(2)
        .and_then(|e| e.parse().ok())
        .unwrap_or(4);
    let started = Instant::now();
    let device = wgpu_device();
    println!("wgpu device: {device:?}");

    let files = [
        (Kind::Dice, dice_loss_fixtures()),
        (Kind::GeneralizedDice, family_fixtures("generalized_dice")),
        (Kind::Tversky, family_fixtures("tversky")),
        (Kind::DiceCe, family_fixtures("dice_ce")),
        (Kind::DiceFocal, family_fixtures("dice_focal")),
        (Kind::MaskedDice, family_fixtures("masked_dice")),
    ];
    let parity: Vec<_> = files
        .iter()
        .map(|(kind, file)| {
            let s = check_file::<WgpuAutodiff>(*kind, file, &device);
            println!(
                "parity {:<16} {:>3} cases  loss {:.2e}  grad {:.2e}  {}",
                s.kind,
                s.cases,
                s.worst_loss,
                s.worst_grad,
                if s.failures.is_empty() { "ok" } else { "FAIL" }
            );
            s
        })
        .collect();
    let parity_ok = parity.iter().all(|s| s.failures.is_empty());

    let cross = compare_backends::<NdArrayAutodiff, WgpuAutodiff>(&Default::default(), &device);
    let cross_ok = cross.iter().all(|c| c.ok);
    println!(
        "wgpu vs ndarray: {} comparisons, {}",
        cross.len(),
        if cross_ok { "ok" } else { "FAIL" }
    );

    let timings = time_loss_cases::<WgpuAutodiff>(20, &device);
    for t in &timings {
        println!(
            "loss {:<36} fwd {:>8.3} ms  fwd+bwd {:>8.3} ms",
            t.case, t.forward_ms, t.forward_backward_ms
        );
    }

    let step = unet::bench::measure::<WgpuAutodiff>(
        &BenchArgs {
            steps: 10,
            batch_size: 8,
            size: 128,
        },
        &device,
    );
    println!(
        "U-Net step [8,1,128,128]: {:.1} ms (inference {:.1} ms)",
        step.step_median_ms, step.inference_ms
    );

    let shapes = Shapes::default();
    let config = TrainConfig::new(
        UNetConfig::new(shapes.class_names().len()).with_batch_norm(true),
        LossKind::DiceCe,
        shapes.class_names(),
    )
    .with_epochs(epochs)
    .with_data(shapes.name())
    .with_image_size(shapes.size);
    let out = std::env::temp_dir().join("gpu-check-unet");
    let _ = std::fs::remove_dir_all(&out);
    let training = train::<WgpuAutodiff>(config, &shapes, &out, false, &device);
    let (train_ok, train_json) = match &training {
        Ok(r) => {
            let last = r.rows.last().cloned();
            let dice = last.as_ref().map_or(f64::NAN, |l| l.valid_dice);
            println!(
                "U-Net shapes training: {} epochs in {:.1} s, validation Dice {dice:.4}",
                r.epochs, r.seconds
            );
            (
                dice.is_finite(),
                json!({"epochs": r.epochs, "seconds": r.seconds, "rows": r.rows}),
            )
        }
        Err(e) => {
            println!("U-Net training failed: {e}");
            (false, json!({"error": e}))
        }
    };

    let pass = parity_ok && cross_ok && train_ok;
    let report = json!({
        "pass": pass,
        "device": format!("{device:?}"),
        "parity": parity,
        "wgpu_vs_ndarray": cross,
        "loss_timings": timings,
        "unet_step": step,
        "unet_training": train_json,
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json"))
        .expect("write the report");
    println!("{} — report in {path}", if pass { "PASS" } else { "FAIL" });
    std::process::exit(if pass { 0 } else { 1 });
}
