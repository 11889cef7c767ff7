//! The U-Net example's command line, as a binary of this package, so that
//! `tests/example_faults.rs` can start it as a process of its own and kill it.

fn main() -> std::process::ExitCode {
    unet::main()
}
