//! `unet`: train, evaluate and predict with a U-Net and burn-dice, on burn-flex, burn-ndarray
//! or burn-wgpu. `cargo run --release -p unet -- train` trains on the embedded shapes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match unet::main_with_args(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
