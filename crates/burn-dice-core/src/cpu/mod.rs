//! The fused CPU kernels, on slices: generic over nothing but the instruction set.
//!
//! `stats.rs` (the per-(sample, class) statistics, forward and backward), `ce.rs` and `focal.rs`
//! (the terms of `DiceCELoss` and `DiceFocalLoss`, summed in the same pass, which knows them
//! through the `PixelTerm` trait of `term.rs`; `pass.rs` picks one at run time) on the activation,
//! loading and checks of `common.rs` and the vector math of `simd.rs`, cut into jobs by
//! `jobs.rs` and compiled per instruction set by `isa.rs` (AVX-512, AVX2 + FMA, SSE4.2, NEON or
//! scalar, chosen at run time and capped by `BURN_DICE_ISA`). A caller describes its tensors as
//! a [`Problem`] (and a [`Term`]), runs [`forward`] (or [`forward_storing`] when a backward pass
//! follows) and later [`backward_stored`] or [`backward`].

mod ce;
mod common;
mod focal;
mod isa;
mod jobs;
mod pass;
mod simd;
mod spec;
mod stats;
mod term;

pub use ce::CeProblem;
pub use common::{Labels, Problem, Target};
pub use focal::FocalProblem;
pub use isa::{instruction_set, ISA_VAR};
pub use pass::{backward, backward_stored, forward, forward_storing, Term};
pub use spec::{Spec, TermSpec};
pub use stats::Sums;
