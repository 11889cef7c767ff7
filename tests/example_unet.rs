//! End-to-end runs of the U-Net example, in-process: `train` on a tiny configuration, `train
//! --resume`, `eval` and `predict`; and the MRI loader on Debian's mricron-data (skipped where
//! it is not installed, unless `BURN_DICE_REQUIRE` names `mri-data`, as in CI).

use std::path::Path;

use burn::config::Config;
use unet::data::shapes::Shapes;
use unet::data::SegmentationData;
use unet::inference;
use unet::training::{SegModel, TrainConfig};

fn run(args: &[&str]) {
    let mut all = vec!["unet"];
    all.extend_from_slice(args);
    if let Err(e) = unet::main_with_args(all.clone()) {
        panic!("unet {}: {e}", all[1..].join(" "));
    }
}

fn csv_rows(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("epoch,train_loss,valid_loss,valid_dice,valid_dice_ellipse"),
        "{header}"
    );
    lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[test]
fn train_resume_eval_predict() {
    let dir = std::env::temp_dir().join(format!("unet-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let tiny = "--size 32 --train-images 128 --valid-images 16 --depth 2 --base-channels 16 \
                --batch-size 8 --lr 0.005 --backend flex";
    let tiny: Vec<&str> = tiny.split_whitespace().collect();
    let mut train = vec!["train", "--out", out_s, "--epochs", "6"];
    train.extend_from_slice(&tiny);
    run(&train);
    let mut resume = vec!["train", "--out", out_s, "--epochs", "8", "--resume"];
    resume.extend_from_slice(&tiny);
    run(&resume);

    for artifact in [
        "config.json",
        "metrics.csv",
        "curves.png",
        "model.mpk",
        "predictions/valid-0.png",
    ] {
        assert!(out.join(artifact).is_file(), "{artifact} missing");
    }
    assert!(out.join("checkpoint/model-8.mpk").is_file());
    let rows = csv_rows(&out.join("metrics.csv"));
    assert_eq!(rows.len(), 8, "6 epochs, then 2 more after --resume");
    for row in &rows {
        assert!(row[1].is_finite() && row[2].is_finite(), "losses {row:?}");
        for d in &row[3..] {
            assert!(d.is_finite() && (0.0..=1.0).contains(d), "Dice {row:?}");
        }
    }

    // eval writes the table; the trained model beats the untrained one.
    let eval_json = dir.join("eval.json");
    let mut eval = vec![
        "eval",
        "--out",
        out_s,
        "--json",
        eval_json.to_str().unwrap(),
    ];
    // The evaluation runs on burn-ndarray: a model trained on one backend loads on another.
    eval.extend_from_slice(&[
        "--size",
        "32",
        "--train-images",
        "128",
        "--valid-images",
        "16",
        "--backend",
        "ndarray",
    ]);
    run(&eval);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    let trained = report["mean_dice"].as_f64().unwrap();
    let config = TrainConfig::load(out.join("config.json")).unwrap();
    let device = Default::default();
    <burn_flex::Flex as burn::tensor::backend::Backend>::seed(&device, 12345);
    let untrained = SegModel::<burn_flex::Flex>::new(&config, &device);
    let valid = Shapes {
        size: 32,
        train: 128,
        valid: 16,
        seed: 42,
    }
    .load()
    .unwrap()
    .valid;
    let before = inference::evaluate(&untrained, &valid, &config.class_names, 8, &device);
    assert!(
        trained > before.mean_dice,
        "trained {trained} vs untrained {}",
        before.mean_dice
    );
    println!(
        "validation Dice: untrained {:.4}, trained {trained:.4}",
        before.mean_dice
    );

    // predict: a PNG in, a mask and an overlay out, at the input's size.
    let input = dir.join("input.png");
    let sample = &valid[0];
    image::GrayImage::from_fn(48, 40, |x, y| {
        let v = sample.image[(y as usize * 32 / 40) * 32 + x as usize * 32 / 48];
        image::Luma([(v.clamp(0.0, 1.0) * 255.0) as u8])
    })
    .save(&input)
    .unwrap();
    let pred_dir = dir.join("pred");
    run(&[
        "predict",
        "--out",
        out_s,
        "--output",
        pred_dir.to_str().unwrap(),
        input.to_str().unwrap(),
        "--backend",
        "ndarray",
    ]);
    let mask = image::open(pred_dir.join("input_mask.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(mask.dimensions(), (48, 40));
    assert!(mask.pixels().all(|p| p.0[0] < 4), "class indices");
    assert!(pred_dir.join("input_overlay.png").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mri_loader_on_mricron_data() {
    use unet::data::mri::{Mri, MriTask, DEFAULT_DIR};
    let dir = Path::new(DEFAULT_DIR);
    if !dir.join("ch2.nii.gz").is_file() {
        burn_dice_tests::missing(
            "mri-data",
            &format!(
                "the MRI loader test reads Debian's mricron-data in {DEFAULT_DIR}: \
                 apt-get install mricron-data"
            ),
        );
        return;
    }
    for (task, classes) in [(MriTask::Brain, 2), (MriTask::Regions, 4)] {
        let data = Mri {
            dir: dir.to_path_buf(),
            task,
            size: 64,
        };
        assert_eq!(data.class_names().len(), classes);
        let splits = data.load().unwrap();
        assert!(
            splits.train.len() > 80 && splits.valid.len() > 10,
            "{} / {}",
            splits.train.len(),
            splits.valid.len()
        );
        for s in splits.train.iter().chain(&splits.valid) {
            assert_eq!((s.height, s.width, s.image.len()), (64, 64, 64 * 64));
            assert!(s.mask.iter().all(|&m| (0..classes as i64).contains(&m)));
        }
        // Every class appears, and the brain is a sizeable part of a validation slice.
        for c in 0..classes as i64 {
            assert!(
                splits.train.iter().any(|s| s.mask.contains(&c)),
                "{task:?} class {c}"
            );
        }
        let brain = splits.valid[splits.valid.len() / 2]
            .mask
            .iter()
            .filter(|&&m| m > 0)
            .count();
        assert!(brain > 64 * 64 / 10, "{brain} brain pixels");
    }
}

/// One small training epoch on `backend`: the run finishes and logs finite numbers.
fn one_epoch_on(backend: &str) {
    let dir = std::env::temp_dir().join(format!("unet-{backend}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.to_str().unwrap();
    let mut args = vec!["train", "--out", out, "--backend", backend];
    args.extend(
        "--epochs 1 --size 32 --train-images 16 --valid-images 8 --depth 2 --base-channels 8"
            .split_whitespace(),
    );
    run(&args);
    let rows = csv_rows(&dir.join("metrics.csv"));
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0][1].is_finite() && (0.0..=1.0).contains(&rows[0][3]),
        "{:?}",
        rows[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// burn-ndarray stays supported: one small epoch on it.
#[test]
fn train_on_ndarray() {
    one_epoch_on("ndarray");
}

/// The example trains on burn-wgpu (lavapipe in CI) end to end.
#[cfg(feature = "wgpu")]
#[test]
fn train_on_wgpu() {
    if burn_dice_tests::wgpu_device().is_some() {
        one_epoch_on("wgpu");
    }
}
