//! Checks of configs, shapes and data, with messages that name the argument and what was
//! expected.
//!
//! # When a data check fails
//! Shapes, ranks and configs are known on the host and fail at once. The data checks of
//! `check_inputs` (finite values, class indices in range, 0/1 masks) need the data: each call
//! gathers them into one small verdict tensor, computed on the device. Reading it back at once
//! would make every call wait until the device has finished all the work queued so far (the
//! whole forward pass of the model, on a GPU), and even a read-back that nobody waits for
//! makes the device backend submit its queue and break its fusion stream. So:
//! - when the verdict is there at once (the CPU backends, where the data is already in host
//!   memory), a failure panics in the call that saw the data;
//! - on a device backend the first checked call of each thread waits for its verdict, so
//!   that a data pipeline that is wrong from the start fails at its first batch;
//! - later calls leave their verdict on the device: every [`CHECK_BATCH`] of them are read
//!   back together in one transfer, started without waiting (one host submission per
//!   [`CHECK_BATCH`] calls, none in between). Each checked call first reports the verdicts
//!   that have arrived since (in order), and a failure panics there with a message that names
//!   the call that saw the bad data; at most [`MAX_PENDING`] transfers are on their way at a
//!   time (a call that would exceed it waits for the oldest); [`wait_for_checks`] reads back
//!   and waits for all of them.
//!
//! Whether a device reads back at once is known for burn-flex (it does); any other device is
//! learned from its first verdict on each thread: a verdict that is there at once marks a
//! device that reads back at once. Verdicts are held and read back per device (a device and
//! its `.autodiff()` form are one).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// How many read-backs of earlier calls' verdicts may be on their way at once, per thread.
pub const MAX_PENDING: usize = 8;

/// How many checked calls on a device backend leave their verdicts on the device before one
/// read-back brings them all (see the module docs).
pub const CHECK_BATCH: usize = 8;

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
pub(crate) struct Checks {
    loss: &'static str,
    flags: Vec<Tensor<1, Int>>,
    messages: Vec<Box<dyn FnOnce() -> String>>,
}

impl Checks {
    pub fn new(loss: &'static str) -> Self {
        Self {
            loss,
            flags: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Panics later (see [`Checks::finish`]) with `message` if `bad` holds a `true`.
    pub fn add<const D: usize>(
        &mut self,
        bad: Tensor<D, Bool>,
        message: impl FnOnce() -> String + 'static,
    ) {
        self.flags.push(bad.any().int());
        self.messages.push(Box::new(message));
    }

    /// Fails if `tensor` holds a NaN or an infinity.
    pub fn finite<const D: usize>(&mut self, name: &'static str, tensor: Tensor<D>) {
        let loss = self.loss;
        self.add(tensor.is_finite().bool_not(), move || {
            format!("{loss}: `{name}` holds NaN or infinite values; expected finite numbers")
        });
    }

    /// Fails if `tensor` holds a value that is not in `[0, 1]` (NaN and infinities included):
    /// a dense target must be one-hot, soft labels or probabilities.
    pub fn probabilities<const D: usize>(&mut self, name: &'static str, tensor: Tensor<D>) {
        let loss = self.loss;
        let bad = tensor
            .clone()
            .is_nan()
            .bool_or(tensor.clone().lower_elem(0.0))
            .bool_or(tensor.greater_elem(1.0));
        self.add(bad, move || dense_target_message(loss, name));
    }

    /// Reads every flag back in one transfer and panics with the first failed check's message:
    /// in this call or a later one (see the module docs).
    pub fn finish(self) {
        if self.flags.is_empty() {
            return;
        }
        let flags = Tensor::cat(self.flags, 0).float();
        let messages = self.messages;
        settle(self.loss, flags, move |flags| {
            let first = flags.iter().position(|&f| f != 0.0)?;
            let message = messages
                .into_iter()
                .nth(first)
                .expect("one message per flag");
            Some(message())
        });
    }
}

pub(crate) use burn_dice_core::checks::{
    dense_target_message, finite_message, label_message, VerdictContext,
};

/// Reads back a kernel's verdict `[non-finite input values, non-finite target values, largest
/// class index, smallest class index]` and panics, in this call or a later one (see the module
/// docs), with the message of the first check it fails.
pub(crate) fn report_verdict(loss: &'static str, flags: Tensor<1>, context: VerdictContext) {
    settle(loss, flags, move |v| {
        if v[0] != 0.0 {
            return Some(finite_message(loss, "input"));
        }
        if v[1] != 0.0 {
            return Some(dense_target_message(loss, "target"));
        }
        if context.labels {
            let (high, low) = (v[2], v[3]);
            if high >= context.n_labels as f64 {
                return Some(label_message(loss, high as i64, context));
            }
            if low < 0.0 {
                return Some(label_message(loss, low as i64, context));
            }
        }
        None
    });
}

/// A read-back on its way from the device.
type Reading = Pin<Box<dyn Future<Output = Result<TensorData, burn::tensor::ExecutionError>>>>;

/// What turns one call's verdict values into the message of a failed check.
type Judge = Box<dyn FnOnce(&[f64]) -> Option<String>>;

/// One call's verdict: the call that asked for it, its loss, how many values it has, and its
/// judge.
struct Entry {
    call: u64,
    loss: &'static str,
    len: usize,
    judge: Judge,
}

impl Entry {
    /// The failure message of a verdict judged after its call returned.
    fn judge_late(self, values: &[f64]) -> Option<String> {
        let (call, loss) = (self.call, self.loss);
        (self.judge)(values).map(|message| {
            format!(
                "{message} (found in the data of checked call {call} on this thread, reported \
                 later: {loss} reads its data checks back without waiting for the device)"
            )
        })
    }
}

/// The verdicts of one or more calls on their way back in one transfer, in call order.
struct Pending {
    reading: Reading,
    entries: Vec<Entry>,
}

impl Pending {
    /// Judges every call's verdict in order; the first failure's message.
    fn judge(self, data: TensorData) -> Option<String> {
        let values = values(data);
        let mut at = 0;
        for entry in self.entries {
            let len = entry.len;
            let message = entry.judge_late(&values[at..at + len]);
            if message.is_some() {
                return message;
            }
            at += len;
        }
        None
    }
}

/// The verdicts of a device backend's calls, still on the device.
struct Held {
    verdicts: Vec<Tensor<1>>,
    entries: Vec<Entry>,
}

impl Held {
    /// Starts the read-back of every held verdict in one transfer; `None` if none is held.
    fn read_back(&mut self) -> Option<Pending> {
        if self.verdicts.is_empty() {
            return None;
        }
        let verdicts = Tensor::cat(std::mem::take(&mut self.verdicts), 0);
        Some(Pending {
            reading: start_reading(verdicts),
            entries: std::mem::take(&mut self.entries),
        })
    }
}

thread_local! {
    /// Checked calls so far on this thread.
    static CALLS: Cell<u64> = const { Cell::new(0) };
    /// Read-backs started so far on this thread (see [`readbacks`]).
    static READBACKS: Cell<u64> = const { Cell::new(0) };
    /// Per device seen on this thread (without its autodiff association): whether its first
    /// verdict was there at once.
    static IMMEDIATE: RefCell<Vec<(Device, bool)>> = const { RefCell::new(Vec::new()) };
    /// Per device that does not read back at once: the verdicts not read back yet.
    static HELD: RefCell<Vec<(Device, Held)>> = const { RefCell::new(Vec::new()) };
    /// Read-backs on their way, oldest first.
    static PENDING: RefCell<VecDeque<Pending>> = const { RefCell::new(VecDeque::new()) };
}

/// The read-backs of data-check verdicts this thread has started so far: one per checked call
/// on the CPU backends and for the first checked call on a device backend, one per
/// [`CHECK_BATCH`] calls after it. Each one on a device backend is a host submission of its
/// queue. For tests that hold the loss to that.
pub fn readbacks() -> u64 {
    READBACKS.with(Cell::get)
}

/// Starts reading `verdicts` back.
fn start_reading(verdicts: Tensor<1>) -> Reading {
    READBACKS.with(|n| n.set(n.get() + 1));
    Box::pin(verdicts.into_data_async())
}

/// The values of a finished read-back.
fn values(data: TensorData) -> Vec<f64> {
    data.convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a verdict is a float tensor")
}

/// Settles the verdict (`verdict`, judged by `judge`) of the call `loss` is making now, as the
/// module docs say.
fn settle(
    loss: &'static str,
    verdict: Tensor<1>,
    judge: impl FnOnce(&[f64]) -> Option<String> + 'static,
) {
    // One type for every held verdict (they are concatenated for their read-back): the
    // kernels' are `f32`, burn-ops flags the backend's default float type (`f16` on `Wgpu<f16>`;
    // exact for 0/1 flags and counts below 2,048).
    let verdict = crate::numerics::in_dtype(verdict, burn::tensor::DType::F32);
    let call = CALLS.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    report_arrived();
    let device = verdict.device().without_autodiff();
    // Whether this thread has checked a call on this device before, and what it learned.
    let seen = IMMEDIATE.with(|m| {
        m.borrow()
            .iter()
            .find(|(d, _)| *d == device)
            .map(|&(_, immediate)| immediate)
    });
    let immediate = crate::kernels::reads_back_at_once(&device).or(seen);
    let entry = Entry {
        call,
        loss,
        len: verdict.dims()[0],
        judge: Box::new(judge),
    };
    if immediate == Some(false) && seen.is_some() {
        hold(device, verdict, entry);
        return;
    }
    let mut reading = start_reading(verdict);
    let mut data = poll_once(reading.as_mut());
    if seen.is_none() {
        let learned = immediate.unwrap_or(data.is_some());
        IMMEDIATE.with(|m| m.borrow_mut().push((device.clone(), learned)));
    }
    if data.is_none() && call == 1 {
        data = Some(block_on(reading.as_mut()));
    }
    match data {
        Some(data) => {
            if let Some(message) = (entry.judge)(&values(read(data))) {
                panic!("{message}");
            }
        }
        None => queue(Pending {
            reading,
            entries: vec![entry],
        }),
    }
}

/// Keeps the verdict of a device backend's call on the device; every [`CHECK_BATCH`] of them
/// are read back together.
fn hold(device: Device, verdict: Tensor<1>, entry: Entry) {
    let full = HELD.with(|held| {
        let mut held = held.borrow_mut();
        let at = match held.iter().position(|(d, _)| *d == device) {
            Some(at) => at,
            None => {
                let batch = Held {
                    verdicts: Vec::new(),
                    entries: Vec::new(),
                };
                held.push((device, batch));
                held.len() - 1
            }
        };
        let batch = &mut held[at].1;
        batch.verdicts.push(verdict);
        batch.entries.push(entry);
        (batch.entries.len() >= CHECK_BATCH)
            .then(|| batch.read_back())
            .flatten()
    });
    if let Some(pending) = full {
        queue(pending);
    }
}

/// Queues a read-back; waits for the oldest while more than [`MAX_PENDING`] are on their way.
fn queue(pending: Pending) {
    PENDING.with(|p| p.borrow_mut().push_back(pending));
    while PENDING.with(|p| p.borrow().len()) > MAX_PENDING {
        let oldest = PENDING.with(|p| p.borrow_mut().pop_front());
        if let Some(mut oldest) = oldest {
            let data = read(block_on(oldest.reading.as_mut()));
            if let Some(message) = oldest.judge(data) {
                panic!("{message}");
            }
        }
    }
}

/// Reports the verdicts of earlier calls that have arrived, oldest first; panics with the first
/// failure.
fn report_arrived() {
    loop {
        let arrived = PENDING.with(|p| {
            let mut pending = p.borrow_mut();
            let data = poll_once(pending.front_mut()?.reading.as_mut())?;
            Some((pending.pop_front().expect("just polled"), data))
        });
        let Some((verdicts, data)) = arrived else {
            return;
        };
        if let Some(message) = verdicts.judge(read(data)) {
            panic!("{message}");
        }
    }
}

/// Waits until the data checks of every earlier loss call on this thread have been read back,
/// and panics with the first failure (see [`crate::checks`] for when they are reported without
/// this call). Returns at once on the CPU backends, where every call is checked before it
/// returns.
///
/// # Panics
/// With the message of the first failed data check.
pub fn wait_for_checks() {
    let held: Vec<Pending> = HELD.with(|held| {
        let mut held = held.borrow_mut();
        let mut batches: Vec<Pending> =
            held.iter_mut().filter_map(|(_, h)| h.read_back()).collect();
        batches.sort_by_key(|b| b.entries.first().map(|e| e.call));
        batches
    });
    PENDING.with(|p| p.borrow_mut().extend(held));
    loop {
        let oldest = PENDING.with(|p| p.borrow_mut().pop_front());
        let Some(mut oldest) = oldest else {
            return;
        };
        let data = read(block_on(oldest.reading.as_mut()));
        if let Some(message) = oldest.judge(data) {
            panic!("{message}");
        }
    }
}

/// The data of a finished reading; a device error is a bug of the device, not of the data.
fn read(data: Result<TensorData, burn::tensor::ExecutionError>) -> TensorData {
    data.unwrap_or_else(|e| panic!("reading a data check back from the device failed: {e:?}"))
}

/// Polls `reading` once without waiting.
fn poll_once<F: Future + ?Sized>(reading: Pin<&mut F>) -> Option<F::Output> {
    match reading.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(data) => Some(data),
        Poll::Pending => None,
    }
}

/// Waits for `reading` on this thread.
fn block_on<F: Future + ?Sized>(mut reading: Pin<&mut F>) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(data) = reading.as_mut().poll(&mut cx) {
            return data;
        }
        std::thread::park();
    }
}

pub use burn_dice_core::checks::ConfigError;
pub(crate) use burn_dice_core::checks::{
    check_non_negative, check_positive, check_smoothing, check_unit, check_weights, or_panic,
};

/// Logs MONAI's warning for `include_background = false` on one channel, once per process.
pub(crate) fn warn_single_channel_background(loss: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!("{loss}: single channel prediction, `include_background = false` ignored");
    }
}
