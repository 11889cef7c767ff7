//! The whole GPU check in one binary, for a GPU machine without a Rust toolchain (see
//! `scripts/gpu-check.sh`): MONAI parity of every loss on wgpu (through the CubeCL kernels),
//! wgpu against ndarray for every loss and the metric (with the kernels' plane reductions, and
//! again with their shared-memory tree where the device offers both), the loss benchmark (every loss on the
//! benchmark cases, kernels and generic path, with bandwidth and memory), the reference
//! U-Net's training step with the data checks on and off, and a short U-Net training on the
//! shapes data set. Writes a JSON report and exits non-zero if any check fails.
//!
//! ```text
//! gpu-check [REPORT] [EPOCHS] [--cases abcd] [--reps N] [--unet-size S] [--rounds N] [--no-unet] [--no-train]
//! ```
//! `--rounds N` runs the loss benchmark N times over in the same process. `--no-unet` skips the
//! U-Net step (it takes most of a lavapipe run), `--no-train` the
//! training. The report is written after each part (with `"complete": false` until the end),
//! so a run cut short by a time limit still leaves what it measured.
//! `BURN_DICE_PEAK_GBPS` gives the device's peak memory bandwidth (GB/s), for the fraction of
//! it each loss achieves.

use std::time::Instant;

use burn_dice_tests::crosscheck::compare_backends;
use burn_dice_tests::gpubench::bench_losses;
use burn_dice_tests::parity::{check_file, Kind};
use burn_dice_tests::{
    dice_loss_fixtures, family_fixtures, wgpu_bytes_in_use, wgpu_device, NdArrayAutodiff,
    WgpuAutodiff,
};
use serde_json::json;
use unet::cli::BenchArgs;
use unet::data::shapes::Shapes;
use unet::data::SegmentationData;
use unet::model::UNetConfig;
use unet::training::{train, LossKind, TrainConfig};

/// The command line.
struct Args {
    report: String,
    epochs: usize,
    cases: String,
    reps: usize,
    unet_size: usize,
    unet: bool,
    train: bool,
    rounds: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            report: "gpu-report.json".into(),
            epochs: 4,
            cases: "abcd".into(),
            reps: 20,
            unet_size: 128,
            unet: true,
            train: true,
            rounds: 1,
        };
        let mut positional = 0;
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .unwrap_or_else(|| panic!("gpu-check: `{name}` needs a value"))
            };
            match a.as_str() {
                "--cases" => args.cases = value("--cases"),
                "--reps" => args.reps = value("--reps").parse().expect("--reps: a number"),
                "--unet-size" => {
                    args.unet_size = value("--unet-size").parse().expect("--unet-size: a number")
                }
                "--no-unet" => args.unet = false,
                "--rounds" => args.rounds = value("--rounds").parse().expect("--rounds: a number"),
                "--no-train" => args.train = false,
                _ if positional == 0 => {
                    args.report = a;
                    positional += 1;
                }
                _ if positional == 1 => {
                    args.epochs = a.parse().expect("EPOCHS: a number");
                    positional += 1;
                }
                other => panic!("gpu-check: unknown argument `{other}`"),
            }
        }
        args
    }
}

/// Writes the report; `complete` is false for the parts written before the run ends.
fn write_report(path: &str, report: &serde_json::Value, complete: bool) {
    let mut report = report.clone();
    report["complete"] = json!(complete);
    std::fs::write(path, serde_json::to_string_pretty(&report).expect("json"))
        .expect("write the report");
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    // A missing adapter fails here, naming what to install.
    let device = wgpu_device().expect("gpu-check needs a wgpu adapter");
    println!("wgpu device: {device:?}");
    let peak_gbps: Option<f64> = std::env::var("BURN_DICE_PEAK_GBPS")
        .ok()
        .and_then(|v| v.parse().ok());

    let files = [
        (Kind::Dice, dice_loss_fixtures()),
        (Kind::GeneralizedDice, family_fixtures("generalized_dice")),
        (Kind::Tversky, family_fixtures("tversky")),
        (Kind::DiceCe, family_fixtures("dice_ce")),
        (Kind::DiceFocal, family_fixtures("dice_focal")),
        (Kind::MaskedDice, family_fixtures("masked_dice")),
        // `soft_label` (MONAI 1.6.1).
        (Kind::Dice, family_fixtures("soft_dice")),
        (
            Kind::GeneralizedDice,
            family_fixtures("soft_generalized_dice"),
        ),
        (Kind::Tversky, family_fixtures("soft_tversky")),
        (Kind::DiceCe, family_fixtures("soft_dice_ce")),
        (Kind::DiceFocal, family_fixtures("soft_dice_focal")),
        (Kind::MaskedDice, family_fixtures("soft_masked_dice")),
    ];
    let parity: Vec<_> = files
        .iter()
        .map(|(kind, file)| {
            let s = check_file::<WgpuAutodiff>(*kind, file, &device);
            let soft = if file.monai_version.starts_with("1.6") {
                " soft_label"
            } else {
                ""
            };
            println!(
                "parity {:<28} {:>3} cases  loss {:.2e}  grad {:.2e}  {}",
                s.kind.clone() + soft,
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

    // Where the device reduces with plane (warp) operations, the shared-memory tree that
    // lavapipe (the CI) runs is compared too, on the same device.
    let planes = burn_dice::kernels::wgpu_plane_reductions(&device);
    let tree = planes.then(|| {
        burn_dice::kernels::set_plane_reductions(false);
        let tree = compare_backends::<NdArrayAutodiff, WgpuAutodiff>(&Default::default(), &device);
        burn_dice::kernels::set_plane_reductions(true);
        println!(
            "wgpu vs ndarray, plane reductions off: {} comparisons, {}",
            tree.len(),
            if tree.iter().all(|c| c.ok) {
                "ok"
            } else {
                "FAIL"
            }
        );
        tree
    });
    println!(
        "cube reductions: {}",
        if planes {
            "plane operations (the tree checked above too)"
        } else {
            "shared-memory tree (the device offers no plane operations)"
        }
    );
    let cross_ok = cross_ok && tree.iter().flatten().all(|c| c.ok);
    let mut report = json!({
        "pass": parity_ok && cross_ok,
        "device": format!("{device:?}"),
        "peak_gbps": peak_gbps,
        "parity": parity,
        "wgpu_vs_ndarray": cross,
        "plane_reductions": planes,
        "wgpu_vs_ndarray_plane_reductions_off": tree,
    });
    write_report(&args.report, &report, false);

    let in_use = || wgpu_bytes_in_use(&device);
    // `--rounds N`: the whole loss benchmark N times over, in the same process (a row that is
    // slow only in the first round was warming up).
    let mut timings = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("loss benchmark, round {round} of {}", args.rounds);
        }
        timings.extend(bench_losses::<WgpuAutodiff>(
            &args.cases,
            args.reps,
            peak_gbps,
            &device,
            &in_use,
        ));
    }
    report["loss_timings"] = json!(timings);
    write_report(&args.report, &report, false);

    let bench_args = BenchArgs {
        steps: 10,
        batch_size: 8,
        size: args.unet_size,
    };
    let steps: Vec<_> = [true, false]
        .into_iter()
        .filter(|_| args.unet)
        .map(|checks| {
            let step = unet::bench::measure_with::<WgpuAutodiff>(&bench_args, checks, &device);
            println!(
                "U-Net step [8,1,{s},{s}], data checks {}: {:.2} ms with a read-back per step, \
                 {:.2} ms queued back to back; loss alone {:.3} ms ({:.1} % of the step)",
                if checks { "on " } else { "off" },
                step.step_median_ms,
                step.step_pipelined_ms,
                step.loss_ms,
                100.0 * step.loss_ms / step.step_pipelined_ms,
                s = args.unet_size,
            );
            json!({"check_inputs": checks, "step": step})
        })
        .collect();
    report["unet_step"] = json!(steps);
    write_report(&args.report, &report, false);

    let (train_ok, train_json) = if args.train {
        let shapes = Shapes::default();
        let config = TrainConfig::new(
            UNetConfig::new(shapes.class_names().len()).with_batch_norm(true),
            LossKind::DiceCe,
            shapes.class_names(),
        )
        .with_epochs(args.epochs)
        .with_data(shapes.name())
        .with_image_size(shapes.size);
        let out = std::env::temp_dir().join("gpu-check-unet");
        let _ = std::fs::remove_dir_all(&out);
        match train::<WgpuAutodiff>(config, &shapes, &out, false, &device) {
            Ok(r) => {
                let dice = r.rows.last().map_or(f64::NAN, |l| l.valid_dice);
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
        }
    } else {
        (true, json!(null))
    };

    let pass = parity_ok && cross_ok && train_ok;
    report["pass"] = json!(pass);
    report["unet_training"] = train_json;
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    write_report(&args.report, &report, true);
    println!(
        "{} — report in {}",
        if pass { "PASS" } else { "FAIL" },
        args.report
    );
    std::process::exit(if pass { 0 } else { 1 });
}
