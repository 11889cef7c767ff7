//! The example `custom_loop` learns: a short run of its own training function on burn-flex
//! must raise the validation Dice from about 0 (after one epoch, 0.0 here) well above it.

#[path = "../examples/custom_loop.rs"]
mod custom_loop;

use burn::tensor::Device;

#[test]
fn the_custom_loop_example_learns_the_shapes() {
    let scores = custom_loop::train(3, 30, &Device::flex().autodiff());
    let (first, last) = (scores[0], scores[2]);
    assert!(
        last > 0.2 && last > first + 0.1,
        "validation Dice per epoch {scores:?}: expected it to rise above 0.2"
    );
}
