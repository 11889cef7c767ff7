//! The U-Net example's command line, as a binary of this package, so that
//! `tests/example_faults.rs` can start it as a process of its own and kill it.

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
