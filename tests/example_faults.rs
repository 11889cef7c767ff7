//! The U-Net example under faults, on small configurations: killed with SIGKILL at random
//! points and resumed, a loss that turns NaN, an output folder or checkpoint that cannot be
//! written, an epoch of a single batch, a `folder` data set with bad files, and data
//! parallelism across processes (`--nodes`: two processes on 127.0.0.1, one that leaves, one
//! alone).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn_dice_tests::XorShift;
use unet::checkpoint::{last_checkpoint, PARTS};
use unet::progress::parse_csv;

const CLASSES: usize = 4;

fn tiny(out: &Path, epochs: usize) -> Vec<String> {
    let mut args: Vec<String> = "train --size 32 --train-images 192 --valid-images 16 --depth 2 \
                                 --base-channels 8 --batch-size 8 --lr 0.005"
        .split_whitespace()
        .map(String::from)
        .collect();
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(["--epochs".into(), epochs.to_string()]);
    args
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unet-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unet(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unet-cli"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn epochs_in_csv(out: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    parse_csv(&text, CLASSES)
        .unwrap()
        .iter()
        .map(|r| r.epoch)
        .collect()
}

fn final_dice(out: &Path) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    parse_csv(&text, CLASSES)
        .unwrap()
        .last()
        .unwrap()
        .valid_dice
}

/// Every checkpoint file under a checkpoint's name decodes in full.
fn assert_checkpoints_complete(out: &Path) {
    use burn::record::{CompactRecorder, Recorder};
    for entry in std::fs::read_dir(out.join("checkpoint")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.contains("partial") {
            continue;
        }
        let mut stem = path.with_extension("");
        Recorder::<burn_flex::Flex>::load_item::<serde::de::IgnoredAny>(
            &CompactRecorder::new(),
            &mut stem,
        )
        .unwrap_or_else(|e| panic!("{name} is not a complete checkpoint: {e:?}"));
    }
}

#[test]
fn killed_at_random_points_then_resumed() {
    let dir = scratch("kill");
    let epochs = 8;
    // The uninterrupted run, as a process of its own: its time sets the kill times.
    let whole = dir.join("whole");
    let started = Instant::now();
    let status = unet(&tiny(&whole, epochs)).status().unwrap();
    assert!(status.success());
    let run_time = started.elapsed();
    assert_eq!(epochs_in_csv(&whole), (1..=epochs).collect::<Vec<_>>());

    let seed = std::env::var("UNET_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = XorShift::new(seed);
    let out = dir.join("killed");
    let mut kills = Vec::new();
    let mut finished = false;
    for attempt in 0..12 {
        let mut args = tiny(&out, epochs);
        let resume = last_checkpoint(&out).is_some();
        if resume {
            args.push("--resume".into());
        }
        let mut child = unet(&args).spawn().unwrap();
        let done = last_checkpoint(&out).unwrap_or(0);
        if kills.len() < 3 && done + 1 < epochs {
            // A random point of the rest of the run that leaves at least one epoch to go: wait
            // for a random number of further epochs to be logged (burn-train checkpoints and
            // our log write at each epoch's end), then a random fraction of an epoch. Timed by
            // progress, not by the clock alone, so that a loaded machine moves the kills with
            // the run instead of past its end.
            let logged = |out: &Path| {
                std::fs::read_to_string(out.join("metrics.csv"))
                    .ok()
                    .and_then(|t| parse_csv(&t, CLASSES).ok())
                    .map_or(0, |rows| rows.len())
            };
            let target = done + rng.below((epochs - done - 1) as u64) as usize;
            let epoch_time = run_time / epochs as u32;
            while logged(&out) < target && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let at = epoch_time.mul_f64(0.05 + 0.75 * rng.unit());
            std::thread::sleep(at);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills.push((target, at, last_checkpoint(&out)));
                // What a killed run leaves is consistent at every point.
                if out.join("metrics.csv").exists() {
                    let seen = epochs_in_csv(&out);
                    assert_eq!(
                        seen,
                        (1..=seen.len()).collect::<Vec<_>>(),
                        "after kill {attempt}"
                    );
                }
                if out.join("checkpoint").exists() {
                    assert_checkpoints_complete(&out);
                }
                continue;
            }
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "attempt {attempt} (resume {resume}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        finished = true;
        break;
    }
    assert!(finished, "the run never finished: kills {kills:?}");
    assert_eq!(
        kills.len(),
        3,
        "three kills landed during training: {kills:?}"
    );
    assert_eq!(epochs_in_csv(&out), (1..=epochs).collect::<Vec<_>>());
    assert_checkpoints_complete(&out);
    for part in PARTS {
        assert!(out
            .join(format!("checkpoint/{part}-{epochs}.mpk"))
            .is_file());
    }
    // A resumed run restarts the data loader's shuffle (burn-train 0.21 does not checkpoint
    // it), so it does not replay the uninterrupted run bit for bit: compare where it ends.
    let (a, b) = (final_dice(&whole), final_dice(&out));
    println!(
        "seed {seed:#x}, run {run_time:?}, kills (after epoch, then, last checkpoint) \
         {kills:?}: final validation Dice {a:.4} \
         uninterrupted, {b:.4} killed 3 times"
    );
    assert!((a - b).abs() < 0.15, "uninterrupted {a} vs interrupted {b}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn run_in_process(args: &[String]) -> Result<(), String> {
    let mut all = vec!["unet".to_string()];
    all.extend_from_slice(args);
    unet::main_with_args(all)
}

#[test]
fn a_loss_that_turns_nan_names_epoch_batch_and_checkpoint() {
    let dir = scratch("nan");
    let out = dir.join("run");
    run_in_process(&tiny(&out, 2)).unwrap();
    // The resumed run takes its learning rate from config.json: make it explode.
    let path = out.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["learning_rate"] = serde_json::json!(1e30);
    std::fs::write(&path, config.to_string()).unwrap();
    let mut args = tiny(&out, 4);
    args.push("--resume".into());
    let err = run_in_process(&args).unwrap_err();
    assert!(err.contains("non-finite"), "{err}");
    assert!(err.contains("at epoch 3, batch "), "{err}");
    assert!(
        err.contains("the last complete checkpoint is epoch 2"),
        "{err}"
    );
    assert_eq!(epochs_in_csv(&out), [1, 2]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_output_that_cannot_be_written_fails_with_its_path() {
    let dir = scratch("unwritable");
    // --out below a regular file: fails before training.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = run_in_process(&tiny(&file.join("run"), 1)).unwrap_err();
    assert!(
        err.contains("cannot create --out") && err.contains("a-file/run"),
        "{err}"
    );

    // A checkpoint that cannot be written (its temporary name is taken by a folder) stops the
    // run with the path, and the earlier checkpoints stay as they were.
    let out = dir.join("run");
    run_in_process(&tiny(&out, 2)).unwrap();
    let before = std::fs::read(out.join("checkpoint/model-2.mpk")).unwrap();
    std::fs::create_dir_all(out.join("checkpoint/model-3-partial.mpk")).unwrap();
    let mut args = tiny(&out, 4);
    args.push("--resume".into());
    let err = run_in_process(&args).unwrap_err();
    assert!(err.contains("checkpoint/model-3.mpk"), "{err}");
    assert!(
        err.contains("the last complete checkpoint is epoch 2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint/model-2.mpk")).unwrap(),
        before
    );
    assert_checkpoints_complete(&out);

    // metrics.csv that cannot be written: fails before training, naming it.
    std::fs::remove_dir_all(out.join("checkpoint/model-3-partial.mpk")).unwrap();
    std::fs::create_dir_all(out.join("metrics.partial.csv")).unwrap();
    let err = run_in_process(&args).unwrap_err();
    assert!(err.contains("metrics.csv"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_epoch_of_one_batch_logs_the_loss_it_trained_on() {
    let dir = scratch("one-batch");
    let out = dir.join("run");
    let args: Vec<String> = format!(
        "train --size 32 --train-images 8 --valid-images 8 --batch-size 8 --depth 2 \
         --base-channels 4 --epochs 2 --out {}",
        out.display()
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    run_in_process(&args).unwrap();
    let rows = parse_csv(
        &std::fs::read_to_string(out.join("metrics.csv")).unwrap(),
        CLASSES,
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(r.train_loss.is_finite() && r.train_loss > 0.0, "{r:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_with_bad_files_names_each_of_them() {
    let dir = scratch("folder");
    let (imgs, masks) = (dir.join("images"), dir.join("masks"));
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    for k in 0..10 {
        image::GrayImage::from_fn(16, 16, |x, _| image::Luma([x as u8 * 9]))
            .save(imgs.join(format!("s{k}.png")))
            .unwrap();
        if k < 9 {
            image::GrayImage::from_fn(16, 16, |x, _| image::Luma([u8::from(x > 7)]))
                .save(masks.join(format!("s{k}.png")))
                .unwrap();
        }
    }
    let mut args: Vec<String> = format!(
        "train --data folder --images {} --masks {} --size 16 --depth 2 --base-channels 4 \
         --epochs 1 --out {}",
        imgs.display(),
        masks.display(),
        dir.join("run").display()
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    let err = run_in_process(&args).unwrap_err();
    assert!(
        err.contains("s9.png") && err.contains("no mask named s9"),
        "{err}"
    );
    args.push("--skip-bad-files".into());
    run_in_process(&args).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --nodes`: processes of the CLI that train one model on 127.0.0.1.
mod nodes {
    use super::*;
    use std::io::Read;
    use std::process::Child;

    /// A free loopback port (bound, then released for the coordinator).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port()
    }

    fn node(out: &Path, epochs: usize, rank: usize, port: u16, extra: &str) -> Vec<String> {
        let mut args = tiny(out, epochs);
        let timeout = if extra.contains("--node-timeout") {
            ""
        } else {
            "--node-timeout 60"
        };
        args.extend(
            format!(
                "--replicas 1 --nodes 2 --node-rank {rank} --coordinator 127.0.0.1:{port} \
                 {timeout} {extra}"
            )
            .split_whitespace()
            .map(String::from),
        );
        args
    }

    /// Waits for `child` at most `limit` (killing it then): its exit status, stdout and stderr.
    fn finish(mut child: Child, limit: Duration) -> (bool, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                child.kill().unwrap();
                panic!("a node ran longer than {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), out, err)
    }

    fn spawn(args: &[String]) -> Child {
        let mut cmd = unet(args);
        cmd.stdout(Stdio::piped());
        cmd.spawn().unwrap()
    }

    #[test]
    fn two_processes_train_like_two_replicas() {
        let dir = scratch("nodes");
        let port = free_port();
        let (out0, out1, both) = (dir.join("node0"), dir.join("node1"), dir.join("replicas"));
        let nodes: Vec<Child> = (0..2)
            .map(|rank| spawn(&node([&out0, &out1][rank], 2, rank, port, "--batch-dice")))
            .collect();
        let ends: Vec<_> = nodes
            .into_iter()
            .map(|child| finish(child, Duration::from_secs(600)))
            .collect();
        for (rank, (ok, out, err)) in ends.iter().enumerate() {
            assert!(ok, "node {rank} failed: {err}");
            assert!(
                out.contains(&format!(
                    "node {rank} of 2: training on images {}..{} of the 192",
                    96 * rank,
                    96 * (rank + 1)
                )),
                "{out}"
            );
            println!("--- node {rank}\n{out}");
        }
        // The same run on one process with two replicas (burn-train's multi-device strategy).
        let mut args = tiny(&both, 2);
        args.extend(["--replicas".into(), "2".into(), "--batch-dice".into()]);
        run_in_process(&args).unwrap();
        let (d0, d1, d2) = (final_dice(&out0), final_dice(&out1), final_dice(&both));
        println!(
            "validation Dice after 2 epochs: node 0 {d0:.4}, node 1 {d1:.4}, 2 replicas {d2:.4}"
        );
        // The nodes' models differ only in their batch-norm running statistics; the replicas'
        // run draws its batches in another order (burn-train forks the shuffling per replica).
        assert!((d0 - d1).abs() < 0.02, "node 0 {d0} vs node 1 {d1}");
        assert!((d0 - d2).abs() < 0.05, "node 0 {d0} vs 2 replicas {d2}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_node_that_leaves_fails_the_other_at_the_step_it_missed() {
        let dir = scratch("nodes-leave");
        let port = free_port();
        // Node 1 trains one epoch (12 steps) and exits; node 0 goes on to step 13.
        let node0 = spawn(&node(&dir.join("node0"), 2, 0, port, ""));
        let node1 = spawn(&node(&dir.join("node1"), 1, 1, port, ""));
        let (ok1, _, err1) = finish(node1, Duration::from_secs(600));
        assert!(ok1, "{err1}");
        let started = Instant::now();
        let (ok0, _, err0) = finish(node0, Duration::from_secs(600));
        assert!(!ok0);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err0.contains("the training failed at epoch 2, batch 1/12"),
            "{err0}"
        );
        assert!(err0.contains("step 13: rank 1 has left"), "{err0}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lone_node_fails_to_join_within_its_timeout_and_bad_flags_are_named() {
        let dir = scratch("nodes-alone");
        let port = free_port();
        let started = Instant::now();
        let err =
            run_in_process(&node(&dir.join("run"), 1, 0, port, "--node-timeout 1.5")).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            err.contains(&format!(
                "rank(s) 1 did not join the coordinator at 127.0.0.1:{port} within 1.5 s"
            )),
            "{err}"
        );
        let err = run_in_process(&node(&dir.join("run"), 1, 2, port, "")).unwrap_err();
        assert!(
            err.contains("--node-rank must be in 0..2 (--nodes 2), got 2"),
            "{err}"
        );
        let err =
            run_in_process(&node(&dir.join("run"), 1, 1, port, "--node-timeout 0")).unwrap_err();
        assert!(
            err.contains("--node-timeout must be a positive number"),
            "{err}"
        );
        let mut args = node(&dir.join("run"), 1, 1, port, "");
        let at = args.iter().position(|a| a == "--coordinator").unwrap();
        args[at + 1] = "nowhere".into();
        let err = run_in_process(&args).unwrap_err();
        assert!(
            err.contains("--coordinator") && err.contains("`nowhere`"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
