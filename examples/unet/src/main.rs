//! `unet`: train, evaluate and predict with a U-Net and burn-dice, on burn-flex, burn-ndarray
//! or burn-wgpu. `cargo run --release -p unet -- train` trains on the embedded shapes.

fn main() -> std::process::ExitCode {
    unet::main()
}
