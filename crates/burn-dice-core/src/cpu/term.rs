//! What the statistics' pass (`stats.rs`) and a term summed in it (`ce.rs`, `focal.rs`) know
//! of each other: the [`PixelTerm`] trait a term implements, the [`BlockData`] the pass shares
//! with it, and [`NoTerm`]. The pass is generic over the trait and names no concrete term;
//! `pass.rs` picks one at run time.

use macerator::Simd;

use super::common::BLOCK;
use super::jobs::Job;
use crate::Activation;

/// What the statistics' pass has computed for a block, which its term reads instead of
/// computing it again.
pub(super) struct BlockData<'a> {
    /// The statistics' activation.
    pub activation: Activation,
    /// `[class][BLOCK]`: the probabilities of that activation (the sigmoid of `x` with
    /// [`Activation::Sigmoid`], its softmax with [`Activation::Softmax`]).
    pub probs: &'a [f32],
    /// Forward pass with [`Activation::Softmax`]: per pixel `max_c x_c` and `Σ_c e^(x_c − max)`.
    pub softmax: Option<(&'a [f32; BLOCK], &'a [f32; BLOCK])>,
    /// The validity weights of the block's pixels.
    pub w: &'a [f32],
    /// Class indices only: the labels of the block's pixels (as `f32`).
    pub labels: &'a [f32],
}

impl BlockData<'_> {
    /// The probabilities of class `c` over the block where the statistics' activation is
    /// `activation`, which a term then reads instead of computing them again.
    #[inline(always)]
    pub fn shared(&self, activation: Activation, c: usize) -> Option<&[f32]> {
        let len = self.w.len();
        (self.activation == activation).then(|| &self.probs[c * BLOCK..c * BLOCK + len])
    }
}

/// A per-pixel term summed in the statistics' pass beside `I`, `P` and `T`: the cross-entropy
/// of `DiceCELoss` (`ce.rs`) and the focal term of `DiceFocalLoss` (`focal.rs`); the pass
/// (`stats.rs`) knows terms through this trait alone. The pass reads
/// each block of the input and target once; the term reads it again while it is in the cache,
/// with what the pass computed of it ([`BlockData`]), and its gradient is added to the
/// statistics' in the one backward pass.
pub(super) trait PixelTerm: Sync {
    /// The rows it adds to the `[3 + ROWS, batch, class]` output.
    const ROWS: usize;
    /// Whether its backward pass reads the statistics' probabilities ([`BlockData::probs`]).
    /// If not, a backward pass from stored probabilities reads them where they are, in the
    /// buffer the gradient then overwrites, instead of copying each block to scratch first.
    const READS_PROBS: bool = true;
    /// Scratch space of one job.
    type Scratch;

    /// A job's scratch space.
    fn scratch(&self) -> Self::Scratch;

    /// Adds the term's sums over the block `(b, n0, len)` to `sums` (`[ROWS][class]`).
    fn forward_block<S: Simd>(
        &self,
        s: &mut Self::Scratch,
        block: Job,
        data: &BlockData,
        sums: &mut [f64],
    );

    /// Adds the input's gradient of the term over the block to `out` (one run per class, the
    /// block at `local` in it); `g(r, c)`: the gradient of its row `r`, class `c`, of sample `b`.
    fn backward_block<S: Simd>(
        &self,
        s: &mut Self::Scratch,
        block: Job,
        data: &BlockData,
        local: usize,
        g: &impl Fn(usize, usize) -> f32,
        out: &mut [&mut [f32]],
    );
}

/// The statistics alone.
pub(super) struct NoTerm;

impl PixelTerm for NoTerm {
    const ROWS: usize = 0;
    const READS_PROBS: bool = false;
    type Scratch = ();

    fn scratch(&self) {}

    #[inline(always)]
    fn forward_block<S: Simd>(&self, _: &mut (), _: Job, _: &BlockData, _: &mut [f64]) {}

    #[inline(always)]
    fn backward_block<S: Simd>(
        &self,
        _: &mut (),
        _: Job,
        _: &BlockData,
        _: usize,
        _: &impl Fn(usize, usize) -> f32,
        _: &mut [&mut [f32]],
    ) {
    }
}
