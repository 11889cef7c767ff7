//! The U-Net example as a library: model, data sets, training, inference and the CLI, so that
//! the workspace tests can run it in-process. The binary (`src/main.rs`) only calls [`main_with_args`].

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod inference;
pub mod model;
pub mod plot;
pub mod progress;
pub mod schedule;
pub mod training;

use burn::tensor::backend::AutodiffBackend;
use clap::error::ErrorKind;
use clap::Parser;

use cli::{BackendKind, Cli, Command};
use model::UNetConfig;
use training::TrainConfig;

/// Runs one command on backend `B`.
pub fn run<B: AutodiffBackend>(command: Command, device: B::Device) -> Result<(), String> {
    match command {
        Command::Train(args) => {
            let data = args.data.build()?;
            let config = if args.resume {
                let path = args.out.join("config.json");
                let config: TrainConfig = burn::config::Config::load(&path)
                    .map_err(|e| format!("--resume: cannot read {}: {e}", path.display()))?;
                // The saved run, continued up to --epochs, on its own learning-rate schedule.
                let config = training::resumed(config, args.epochs);
                if let Some(n) = config.schedule_epochs.filter(|&n| n != args.epochs) {
                    println!(
                        "--resume with --epochs {}: the learning-rate schedule of the resumed run \
                         ({n} epochs) is kept{}",
                        args.epochs,
                        if args.epochs > n {
                            "; the epochs after it run at its final rate"
                        } else {
                            ""
                        }
                    );
                }
                config
            } else {
                let class_names = data.class_names();
                TrainConfig::new(
                    UNetConfig::new(class_names.len())
                        .with_depth(args.depth)
                        .with_base_channels(args.base_channels)
                        .with_batch_norm(args.batch_norm)
                        .with_upsampling(args.upsampling.into()),
                    args.loss,
                    class_names,
                )
                .with_ignore_index(data.ignore_index())
                .with_epochs(args.epochs)
                .with_batch_size(args.batch_size)
                .with_learning_rate(args.lr)
                .with_lr_schedule(args.lr_schedule)
                .with_warmup_epochs(Some(args.warmup_epochs))
                .with_augment(args.augment.unwrap_or(data.augment_by_default()))
                .with_seed(args.data.seed)
                .with_workers(args.workers)
                .with_replicas(Some(args.replicas.unwrap_or(1)))
                .with_batch_dice(args.batch_dice)
                .with_data(data.name())
                .with_image_size(args.data.image_size())
            };
            let processes = args.join_nodes()?;
            let report = training::train_on_nodes::<B>(
                config,
                data.as_ref(),
                &args.out,
                args.resume,
                processes,
                &device,
            )?;
            if let Some(last) = report.rows.last() {
                println!(
                    "trained {} epoch(s) in {:.0} s: validation Dice {:.4} (foreground mean); artifacts in {}",
                    report.epochs,
                    report.seconds,
                    last.valid_dice,
                    args.out.display()
                );
            }
            Ok(())
        }
        Command::Eval(args) => {
            let (config, model) =
                inference::load::<B::InnerBackend>(&args.out, args.epoch, &device)?;
            let data = args.data.build()?;
            if data.class_names().len() != config.class_names.len() {
                return Err(format!(
                    "eval: the model has {} classes, the data set {}",
                    config.class_names.len(),
                    data.class_names().len()
                ));
            }
            let splits = data.load()?;
            let report = inference::evaluate(
                &model,
                &splits.valid,
                &config.class_names,
                config.batch_size,
                &device,
            );
            print!("{}", report.table());
            let json = args.json.unwrap_or_else(|| args.out.join("eval.json"));
            std::fs::write(
                &json,
                serde_json::to_string_pretty(&report).expect("serializable"),
            )
            .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
            println!("written {}", json.display());
            Ok(())
        }
        Command::Predict(args) => {
            let (config, model) = inference::load::<B::InnerBackend>(&args.out, None, &device)?;
            for path in
                inference::predict_files(&model, &config, &args.inputs, &args.output, &device)?
            {
                println!("written {}", path.display());
            }
            Ok(())
        }
        Command::Bench(args) => bench::run::<B>(&args, &device),
    }
}

/// The `unet` program: runs the command line of this process and prints an error to stderr.
pub fn main() -> std::process::ExitCode {
    match main_with_args(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses `args` (the program name first) and runs the command on the chosen backend.
pub fn main_with_args<I, T>(args: I) -> Result<(), String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            print!("{e}");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut command = cli.command;
    if let Command::Train(args) = &mut command {
        args.replicas
            .get_or_insert_with(|| cli::default_replicas(cli.backend));
    }
    let result = match cli.backend {
        BackendKind::Flex => run::<burn_autodiff::Autodiff<burn_flex::Flex>>(command, Default::default()),
        BackendKind::Ndarray => {
            run::<burn_autodiff::Autodiff<burn_ndarray::NdArray>>(command, Default::default())
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => run::<burn_autodiff::Autodiff<burn_wgpu::Wgpu>>(command, Default::default()),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(
            "--backend wgpu needs the `wgpu` feature: cargo run --release -p unet --features wgpu -- ...".into(),
        ),
    };
    result.map_err(|e| format!("error: {e}"))
}
