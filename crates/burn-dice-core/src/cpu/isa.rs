//! Run-time dispatch to an AVX2 + FMA or AVX-512 build of the same loops where the CPU has
//! them (8 or 16 lanes instead of SSE2's 4); the code is identical, only the instruction set
//! differs.

/// The instruction sets the jobs are compiled for; the code is the same, only the vector width
/// (SSE2's 4 lanes, AVX2's 8, AVX-512's 16) and the fused multiply-adds differ. Chosen at run
/// time from what the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 (F and VL), AVX2 and FMA.
    Avx512,
}

impl Isa {
    /// The widest this CPU runs.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// Every level this CPU runs (for tests).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        [Isa::Baseline, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&isa| isa == Isa::Baseline || Isa::best() == isa || Isa::best() == Isa::Avx512)
            .collect()
    }
}

/// One job of a kernel, compiled for whichever instruction set [`dispatch`] picks:
/// `run::<true>` inside the AVX2 and AVX-512 builds (fused multiply-adds), `run::<false>` for
/// the baseline.
pub(super) trait Kernel {
    type Out;
    fn run<const FMA: bool>(self) -> Self::Out;
}

/// A module whose `run` runs a [`Kernel`] compiled with `$features` enabled; calling it is
/// sound only on a CPU that has those features.
macro_rules! build_for {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            #[target_feature(enable = $features)]
            pub(super) fn run<K: super::Kernel>(kernel: K) -> K::Out {
                kernel.run::<true>()
            }
        }
    };
}

build_for!(avx2, "avx2,fma");
build_for!(avx512, "avx512f,avx512vl,avx2,fma");

/// Runs `kernel` compiled for `isa`, which must be at most [`Isa::best`].
#[allow(unsafe_code)]
pub(super) fn dispatch<K: Kernel>(isa: Isa, kernel: K) -> K::Out {
    match isa {
        // SAFETY: `isa` is at most `Isa::best()`: the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::run(kernel) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::run(kernel) },
        _ => kernel.run::<false>(),
    }
}

/// A [`Kernel`] from a job function generic over `FMA`: `kernel_job!(Name, |args| body)`
/// declares the struct `Name` holding the arguments and its `run`, which evaluates `body`
/// with the const `FMA` in scope.
macro_rules! kernel_job {
    ($name:ident<$($lt:lifetime),*> { $($field:ident: $ty:ty),* $(,)? } -> $out:ty = $body:expr) => {
        struct $name<$($lt),*> {
            $($field: $ty),*
        }

        impl<$($lt),*> Kernel for $name<$($lt),*> {
            type Out = $out;

            #[inline(always)]
            fn run<const FMA: bool>(self) -> $out {
                let $name { $($field),* } = self;
                $body
            }
        }
    };
}
pub(super) use kernel_job;
