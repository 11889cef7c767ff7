//! Run-time dispatch of the kernels to the widest instruction set the CPU has, through
//! macerator (the SIMD layer of burn's own CPU backends): the kernels are written once against
//! `macerator::Vector<S, f32>` (`simd.rs`) and compiled here for each level.
//!
//! `BURN_DICE_ISA` caps the level (for tests and benchmarks of every level on one machine):
//! `scalar`, `baseline` (the 128-bit level: SSE4.2 on x86-64, NEON on aarch64), `sse`, `neon`,
//! `avx2`, `avx512`. A cap above what the CPU has changes nothing; `sse` and `neon` are the same
//! rank. Any other value is an error naming the variable and the values it takes.

use std::sync::OnceLock;

use macerator::{Arch, WithSimd};

/// The environment variable that caps the instruction set.
pub const ISA_VAR: &str = "BURN_DICE_ISA";

/// The levels the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// One `f32` lane, plain code (any target).
    Scalar,
    /// x86-64-v2 (SSE4.2): 4 lanes, multiply and add separate.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Sse,
    /// aarch64 NEON with FMA: 4 lanes.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    /// x86-64-v3 (AVX2 + FMA): 8 lanes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// x86-64-v4 (AVX-512 F/VL/BW/DQ/CD): 16 lanes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl Isa {
    /// Every level there is, narrowest first.
    const ALL: [Isa; 5] = [Isa::Scalar, Isa::Sse, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// The lane width's rank (a cap compares ranks).
    fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Sse | Isa::Neon => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
        }
    }

    /// The name `BURN_DICE_ISA` and the benchmarks use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Sse => "sse",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The widest level this CPU runs, as macerator detects it.
    fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(unreachable_patterns)]
            match Arch::detect() {
                Arch::Scalar => Isa::Scalar,
                Arch::V2 => Isa::Sse,
                Arch::V3 => Isa::Avx2,
                _ => Isa::Avx512,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            #[allow(unreachable_patterns)]
            match Arch::detect() {
                Arch::Scalar => Isa::Scalar,
                _ => Isa::Neon,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = Arch::detect();
            Isa::Scalar
        }
    }

    /// Whether this CPU runs `self`.
    fn runs_here(self) -> bool {
        let best = Isa::detected();
        let same_arch = match self {
            Isa::Scalar => true,
            Isa::Sse | Isa::Avx2 | Isa::Avx512 => cfg!(target_arch = "x86_64"),
            Isa::Neon => cfg!(target_arch = "aarch64"),
        };
        same_arch && self.rank() <= best.rank()
    }

    /// The level the kernels run at: the widest this CPU has, capped by `BURN_DICE_ISA`.
    ///
    /// # Panics
    /// If `BURN_DICE_ISA` is set to a value that names no level.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = std::env::var(ISA_VAR).ok();
            Isa::capped(cap.as_deref()).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// The widest level this CPU runs at or under the cap named by `cap` (see the module docs).
    fn capped(cap: Option<&str>) -> Result<Isa, String> {
        let best = Isa::detected();
        let Some(cap) = cap.map(str::trim).filter(|c| !c.is_empty()) else {
            return Ok(best);
        };
        let rank = match cap.to_ascii_lowercase().as_str() {
            "scalar" => 0,
            "baseline" | "sse" | "neon" => 1,
            "avx2" => 2,
            "avx512" => 3,
            _ => {
                return Err(format!(
                    "{ISA_VAR}={cap:?}: expected one of scalar, baseline, sse, neon, avx2, \
                     avx512 (the widest instruction set the CPU kernels may use)"
                ))
            }
        };
        Ok(Isa::ALL
            .into_iter()
            .filter(|isa| isa.runs_here() && isa.rank() <= rank)
            .max_by_key(|isa| isa.rank())
            .unwrap_or(Isa::Scalar))
    }

    /// Every level this CPU runs, narrowest first (the tests run each).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.runs_here()).collect()
    }

    /// macerator's name for the level.
    fn arch(self) -> Arch {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Sse => Arch::V2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Arch::V3,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Arch::V4,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Arch::NeonFma,
            _ => Arch::Scalar,
        }
    }
}

/// The instruction set the CPU kernels run with here: `avx512`, `avx2`, `sse`, `neon` or
/// `scalar` (the widest the CPU has, capped by `BURN_DICE_ISA`).
pub fn instruction_set() -> &'static str {
    Isa::best().name()
}

/// Runs `kernel` compiled for `isa`.
///
/// # Panics
/// If this CPU does not run `isa` (a caller's bug: levels come from [`Isa::best`] or
/// [`Isa::available`]).
#[allow(unsafe_code)]
pub(super) fn dispatch<K: WithSimd>(isa: Isa, kernel: K) -> K::Output {
    assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
    // SAFETY: the CPU has the features of `isa` (checked just above).
    unsafe { isa.arch().dispatch(kernel) }
}

/// A kernel job for [`dispatch`]: `kernel_job!(Name<'a, ..; T: Bound, ..> { field: Type, .. }
/// -> Out = body)` declares the struct `Name` holding the arguments (generic over the lifetimes
/// and the type parameters after `;`, if any) and its `WithSimd::with_simd`, which evaluates
/// `body` with the fields bound and the vector type `S` in scope.
macro_rules! kernel_job {
    ($name:ident<$($lt:lifetime),* $(; $($tp:ident: $bound:path),*)?> {
        $($field:ident: $ty:ty),* $(,)?
    } -> $out:ty = $body:expr) => {
        struct $name<$($lt),* $(, $($tp: $bound),*)?> {
            $($field: $ty),*
        }

        impl<$($lt),* $(, $($tp: $bound),*)?> macerator::WithSimd
            for $name<$($lt),* $(, $($tp),*)?>
        {
            type Output = $out;

            #[inline(always)]
            fn with_simd<S: macerator::Simd>(self) -> $out {
                let $name { $($field),* } = self;
                $body
            }
        }
    };
}
pub(super) use kernel_job;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_their_errors() {
        let best = Isa::detected();
        assert_eq!(Isa::capped(None), Ok(best));
        assert_eq!(Isa::capped(Some("")), Ok(best));
        assert_eq!(Isa::capped(Some("avx512")), Ok(best));
        assert_eq!(Isa::capped(Some("scalar")), Ok(Isa::Scalar));
        for cap in ["baseline", "SSE", "neon"] {
            let isa = Isa::capped(Some(cap)).unwrap();
            assert!(isa.rank() <= 1 && isa.runs_here(), "{cap}: {isa:?}");
        }
        let avx2 = Isa::capped(Some("avx2")).unwrap();
        assert!(avx2.rank() <= 2 && avx2.runs_here());
        let err = Isa::capped(Some("avx1024")).unwrap_err();
        assert!(
            err.contains("BURN_DICE_ISA") && err.contains("avx1024") && err.contains("baseline"),
            "{err}"
        );
        // Every level at or under the best runs here, and the best is among them.
        let available = Isa::available();
        assert!(available.contains(&best) && available.contains(&Isa::Scalar));
    }
}
