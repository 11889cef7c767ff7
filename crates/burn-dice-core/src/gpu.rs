//! The host side of the CubeCL kernels, shared by both release lines (burn 0.21 with CubeCL
//! 0.10, burn 0.22 with CubeCL 0.11): what one launch computes ([`StatsSpec`], comptime in the
//! kernels), and the launch plan that both lines' kernels follow — the cube size, the tiling of
//! the pixels, the class groups that fit the shared memory, the layout of the per-cube partial
//! results and the vector width of the loads. Plain Rust, no CubeCL: each line's
//! `kernels/cube/` holds the `#[cube]` code (the two CubeCL versions take different kernel
//! code) and the launches, and reads its plan from here.

use crate::{Activation, Terms};

/// Threads per cube of the reductions where the device allows it (see [`cube_size`]).
pub const MAX_CUBE: usize = 256;
/// The fewest threads per cube the reductions take: `cube_reduce` (each line's `kernels/cube/common.rs`)'s last step gives a value
/// (at most 5 rows × [`CLASS_GROUP`] classes) a thread each. Vulkan guarantees 128.
const MIN_CUBE: usize = 64;
/// The reductions aim at about this many cubes in all (enough to fill a large GPU several
/// times over), with at least one pixel per thread.
const TARGET_CUBES: usize = 1024;
/// Classes whose sums a thread keeps in registers at once; more classes are taken in groups of
/// this many (the softmax normalizer is then recomputed per group, from cache).
pub const CLASS_GROUP: usize = 8;

/// The activation, as a comptime code.
pub const ACT_NONE: u32 = 0;
/// See [`ACT_NONE`].
pub const ACT_SIGMOID: u32 = 1;
/// See [`ACT_NONE`].
pub const ACT_SOFTMAX: u32 = 2;

/// The activation's comptime code.
pub fn activation_code(activation: Activation) -> u32 {
    match activation {
        Activation::None => ACT_NONE,
        Activation::Sigmoid => ACT_SIGMOID,
        Activation::Softmax => ACT_SOFTMAX,
    }
}

/// Class loops of at most this many iterations are unrolled (the class count is comptime);
/// longer ones stay loops, so that a kernel for 100 classes does not compile to 100 copies.
pub const UNROLL_CLASSES: usize = 16;

/// Threads per cube for the reductions on a device that allows `max_units` per cube: the
/// largest power of two up to [`MAX_CUBE`] (256 on every desktop GPU; fewer on a device with a
/// lower limit, such as 128 under Vulkan's minimum). Comptime in the kernels.
pub fn cube_size(max_units: u32) -> usize {
    let limit = max_units as usize;
    assert!(
        limit >= MIN_CUBE,
        "burn-dice GPU kernels: the device runs {max_units} threads per cube, fewer than the \
         {MIN_CUBE} the reductions take"
    );
    let pow2 = 1usize << limit.ilog2();
    pow2.min(MAX_CUBE)
}

/// The distance between two values' rows in the shared memory of `cube_reduce` for cubes of
/// `cube` threads: a cube's worth of values plus a pad of half a bank row, so that the
/// radix-[`RADIX`] tree's threads for two neighbouring values land in different banks.
pub const fn stride(cube: usize) -> usize {
    cube + 16
}
/// The fan-in of the second level of `cube_reduce`'s tree; the first level's is
/// `cube / RADIX` (16 for 256 threads).
pub const RADIX: usize = 16;
/// The shared memory a `cube_reduce` of `count` values over `cube` threads takes.
pub const fn reduce_shared(count: usize, cube: usize) -> usize {
    count * stride(cube)
}

/// The slots of a cube's partial verdict, each reduced over the cube by `cube_reduce` with
/// `sums = 2`: non-finite input values and bad dense target values (counts, added), the
/// largest class index and the negated smallest one (taken the largest of). The second stage
/// (`sum_tiles_kernel`) turns them into the `[4]` verdict `[count, count, largest,
/// smallest]` that each line's `checks::report_verdict` reads.
pub const VERDICT: usize = 4;

/// The classes a thread keeps in registers at once (`size`), and the number of such groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Groups {
    /// Classes at once.
    pub size: usize,
    /// Groups of them.
    pub count: usize,
}

/// The [`Groups`] of `classes` classes whose sums take `rows` values each: at most
/// [`CLASS_GROUP`] classes at once, and as many as the shared memory of `cube_reduce` holds
/// (`max_shared` bytes, the device's limit: 32 KiB on lavapipe, 48 KiB on NVIDIA; a kernel
/// that asks for more is not refused everywhere, its results are wrong). On 32 KiB the
/// statistics (`rows` = 3) take 8 classes at once, with the focal term's row 7, with the
/// cross-entropy's two rows 5.
pub fn class_groups(classes: usize, rows: usize, max_shared: usize, cube: usize) -> Groups {
    // The verdict's 4 values share the buffer: at least 2 classes' worth of 3 rows.
    // 1 KiB left to what the compiler may add.
    let fits =
        |size: usize| reduce_shared((rows * size).max(VERDICT), cube) * 4 + 1024 <= max_shared;
    let mut size = classes.clamp(1, CLASS_GROUP);
    while size > 1 && !fits(size) {
        size -= 1;
    }
    assert!(
        fits(size),
        "burn-dice GPU kernels: the device's {max_shared} bytes of shared memory per cube hold \
         less than one class's sums"
    );
    Groups {
        size,
        count: classes.div_ceil(size),
    }
}

/// How a reduction kernel covers `[batch, pixels]`: `tiles` cubes of `cube` threads per sample,
/// each thread walking `per_thread` pixels.
#[derive(Debug, Clone, Copy)]
pub struct Tiling {
    /// Cubes per sample.
    pub tiles: usize,
    /// Pixels (vectors of them) per thread.
    pub per_thread: usize,
}

impl Tiling {
    /// The tiling of `batch` samples of `pixels` each in cubes of `cube` threads: about
    /// `TARGET_CUBES` cubes in all, at most 65,535 per sample.
    pub fn new(batch: usize, pixels: usize, cube: usize) -> Self {
        assert!(
            batch <= u16::MAX as usize,
            "burn-dice GPU kernels: a batch of {batch} samples is more than one launch covers \
             ({})",
            u16::MAX
        );
        let mut per_thread = (batch * pixels).div_ceil(cube * TARGET_CUBES).max(1);
        // A launch dimension holds at most 65,535 cubes.
        per_thread = per_thread.max(pixels.div_ceil(cube * u16::MAX as usize));
        let tiles = pixels.div_ceil(cube * per_thread);
        Tiling { tiles, per_thread }
    }
}

/// How a reduction's first stage lays out its per-cube partial results in one `f32` buffer:
/// `[batch, width, stats, tiles]` partial sums (each output's tiles contiguous, for the
/// second stage to read in order), then, with `check`, [`VERDICT`] rows of `batch · tiles`
/// partial verdicts.
#[derive(Debug, Clone, Copy)]
pub struct Partials {
    /// Samples.
    pub batch: usize,
    /// Cubes per sample ([`Tiling::tiles`]).
    pub tiles: usize,
    /// Outputs per sample and statistic (the classes).
    pub width: usize,
    /// Statistics per output (the rows of [`ExtraTerm::rows`]).
    pub stats: usize,
    /// Whether the verdict's partial results follow.
    pub check: bool,
}

impl Partials {
    /// The number of `f32` values of the buffer.
    pub fn values(&self) -> usize {
        let verdicts = if self.check { VERDICT } else { 0 };
        self.batch * self.tiles * (self.width * self.stats + verdicts)
    }
}

/// The pixels a kernel thread reads with one load (the lanes of its vectors) for `pixels`
/// pixels per class when the device loads at most `widest` values of every tensor at once:
/// the largest power of two up to `widest` that divides `pixels`. The rows of the classes
/// start `pixels` apart, so a vector may not straddle two of them: there is no tail, a row
/// length that 4 does not divide takes pairs or single values throughout. (Segmentation
/// images and volumes have even sides almost always.)
pub fn lanes_for(pixels: usize, widest: usize) -> usize {
    let mut lanes = widest.max(1);
    while lanes > 1 && !pixels.is_multiple_of(lanes) {
        lanes /= 2;
    }
    lanes
}

/// The per-pixel term summed beside the statistics (comptime in the kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtraTerm {
    /// None: the output holds `I`, `P`, `T`.
    None,
    /// The cross-entropy (`kernels/cube/ce.rs`): two more rows, `Σ w·ℓ_c` and `Σ w·norm_c`, whose sums over
    /// the classes are the sample's loss and normalizer. `class_weight`: `ce_weight` is set.
    Ce {
        /// `ce_weight` is set.
        class_weight: bool,
    },
    /// The focal term (`kernels/cube/focal.rs`): one more row. `alpha`: `α` is set.
    Focal {
        /// `α` is set.
        alpha: bool,
    },
}

impl ExtraTerm {
    /// The rows of the output: `I`, `P`, `T` and the term's.
    pub fn rows(self) -> usize {
        match self {
            ExtraTerm::None => 3,
            ExtraTerm::Ce { .. } => 5,
            ExtraTerm::Focal { .. } => 4,
        }
    }

    /// The cross-entropy.
    pub fn is_ce(self) -> bool {
        matches!(self, ExtraTerm::Ce { .. })
    }

    /// The focal term.
    pub fn is_focal(self) -> bool {
        matches!(self, ExtraTerm::Focal { .. })
    }

    /// The cross-entropy with class weights.
    pub fn has_class_weight(self) -> bool {
        matches!(self, ExtraTerm::Ce { class_weight: true })
    }

    /// The focal term with `α`.
    pub fn has_alpha(self) -> bool {
        matches!(self, ExtraTerm::Focal { alpha: true })
    }
}

/// The options of one statistics problem (comptime in the kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatsSpec {
    /// [`ACT_NONE`], [`ACT_SIGMOID`] or [`ACT_SOFTMAX`].
    pub activation: u32,
    /// The per-pixel terms of the sums.
    pub terms: Terms,
    /// The term summed beside them.
    pub extra: ExtraTerm,
}

/// The run-time values of the [`ExtraTerm`] (those of the other term 0): the cross-entropy's
/// `π` (single channel) and `ε`, or the focal term's `γ` and `α` (0 when `α` is unset; the
/// comptime [`ExtraTerm::Focal`] says whether it is).
#[derive(Debug, Clone, Copy, Default)]
pub struct TermValues {
    /// `π`.
    pub pos_weight: f32,
    /// `ε`.
    pub label_smoothing: f32,
    /// `γ`.
    pub gamma: f32,
    /// `α`.
    pub alpha: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_divide_the_rows() {
        // (pixels, widest) -> lanes
        let cases = [
            ((4096, 4), 4),
            ((20, 4), 4),
            ((30, 4), 2),
            ((35, 4), 1),
            ((6, 8), 2),
            ((24, 8), 8),
            ((1, 4), 1),
            ((12, 1), 1),
            ((12, 0), 1),
        ];
        for ((pixels, widest), lanes) in cases {
            assert_eq!(
                lanes_for(pixels, widest),
                lanes,
                "{pixels} pixels, {widest} wide"
            );
        }
    }

    #[test]
    fn cube_size_is_the_largest_power_of_two_the_device_allows() {
        assert_eq!(cube_size(1024), 256);
        assert_eq!(cube_size(256), 256);
        assert_eq!(cube_size(192), 128);
        assert_eq!(cube_size(128), 128);
        assert_eq!(cube_size(64), 64);
        let small = std::panic::catch_unwind(|| cube_size(32)).unwrap_err();
        let message = small.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("32 threads per cube, fewer than the 64"),
            "{message}"
        );
    }

    #[test]
    fn class_groups_fit_the_shared_memory() {
        let kib = 1024;
        // (classes, rows, shared memory) -> (classes at once, groups). lavapipe's 32 KiB: the
        // statistics, the focal term's row, the cross-entropy's two; NVIDIA's 48 KiB: every
        // loss takes 8 classes at once.
        let cases = [
            ((11, 3, 32), (8, 2)),
            ((11, 4, 32), (7, 2)),
            ((11, 5, 32), (5, 3)),
            ((3, 5, 32), (3, 1)),
            ((1, 5, 32), (1, 1)),
            ((20, 5, 48), (8, 3)),
        ];
        for ((classes, rows, shared), (size, count)) in cases {
            let got = class_groups(classes, rows, shared * kib, MAX_CUBE);
            assert_eq!(
                got,
                Groups { size, count },
                "{classes} classes, {rows} rows"
            );
        }
        for rows in [3, 4, 5] {
            for classes in 1..40 {
                let g = class_groups(classes, rows, 32 * kib, MAX_CUBE);
                assert!(reduce_shared((rows * g.size).max(VERDICT), MAX_CUBE) * 4 <= 32 * kib);
                assert!(g.size * g.count >= classes && g.size * (g.count - 1) < classes);
            }
        }
    }
}
