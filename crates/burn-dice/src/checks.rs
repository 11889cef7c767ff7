//! Checks of configs, shapes and data, with messages that name the argument and what was
//! expected.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// Checks an input shape: rank of at least 3, no empty dimension.
///
/// # Panics
/// With a message naming `loss` and the shape.
pub(crate) fn check_input_shape<const D: usize>(loss: &str, dims: &[usize; D]) {
    assert!(
        D >= 3,
        "{loss}: `input` must have shape [batch, class, *spatial] with 1 to 3 spatial dims \
         (rank 3, 4 or 5), got rank {D} with shape {dims:?}"
    );
    assert!(
        dims.iter().all(|&d| d > 0),
        "{loss}: `input` has an empty dimension: shape {dims:?}"
    );
}

/// Data checks that need to read the device: collected, then read back in one transfer.
///
/// Each check is a boolean "something is wrong" flag and the message to panic with.
pub(crate) struct Checks<B: Backend> {
    loss: &'static str,
    flags: Vec<Tensor<B, 1, Int>>,
    messages: Vec<Box<dyn FnOnce() -> String>>,
}

impl<B: Backend> Checks<B> {
    pub fn new(loss: &'static str) -> Self {
        Self {
            loss,
            flags: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Panics later (in [`Checks::finish`]) with `message` if `bad` holds a `true`.
    pub fn add<const D: usize>(
        &mut self,
        bad: Tensor<B, D, Bool>,
        message: impl FnOnce() -> String + 'static,
    ) {
        self.flags.push(bad.any().int());
        self.messages.push(Box::new(message));
    }

    /// Fails if `tensor` holds a NaN or an infinity.
    pub fn finite<const D: usize>(&mut self, name: &'static str, tensor: Tensor<B, D>) {
        if crate::fused::all_finite(&tensor) == Some(true) {
            return;
        }
        let loss = self.loss;
        self.add(tensor.is_finite().bool_not(), move || {
            format!("{loss}: `{name}` holds NaN or infinite values; expected finite numbers")
        });
    }

    /// Reads every flag in one transfer and panics with the first failed check's message.
    pub fn finish(self) {
        if self.flags.is_empty() {
            return;
        }
        let flags = Tensor::cat(self.flags, 0).into_data();
        let flags = flags
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("flags are integers");
        if let Some(first) = flags.iter().position(|&f| f != 0) {
            let message = self
                .messages
                .into_iter()
                .nth(first)
                .expect("one message per flag");
            panic!("{}", message());
        }
    }
}

/// Panics unless a smoothing term is finite and non-negative.
pub(crate) fn check_smoothing(loss: &str, name: &str, value: f64) {
    assert!(
        value.is_finite() && value >= 0.0,
        "{loss}Config: `{name}` must be finite and >= 0, got {value}"
    );
}

/// Panics unless class weights (config field `name`) are non-empty, finite and non-negative.
pub(crate) fn check_weights(loss: &str, name: &str, weight: &[f32]) {
    assert!(
        !weight.is_empty(),
        "{loss}Config: `{name}` must hold one weight per class, got an empty list"
    );
    if let Some((i, w)) = weight
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
    {
        panic!("{loss}Config: `{name}[{i}]` must be finite and >= 0, got {w}");
    }
}

/// Logs MONAI's warning for `include_background = false` on one channel, once per process.
pub(crate) fn warn_single_channel_background(loss: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!("{loss}: single channel prediction, `include_background = false` ignored");
    }
}

/// Panics unless a coefficient is finite and non-negative.
pub(crate) fn check_non_negative(loss: &str, name: &str, value: f64) {
    assert!(
        value.is_finite() && value >= 0.0,
        "{loss}Config: `{name}` must be finite and >= 0, got {value}"
    );
}
