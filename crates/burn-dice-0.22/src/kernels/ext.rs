//! The values the kernels' backend extensions take and return besides plain tensors, as
//! backend primitives (`#[derive(ExtensionType)]`, so that burn's dispatch maps them onto the
//! backend it routes to): the target, the optional tensors (an extension method takes no
//! `Option` of a tensor), and the verdict of the data checks. Shared by the Flex extension
//! (`cpu.rs`) and the Cube one (`cube/mod.rs`); the Cube one runs under burn-fusion too, so the
//! types carry Fusion metadata with feature `wgpu`.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType};

/// The target of a kernel call, as a backend's primitives.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub enum KernelTarget<B: Backend> {
    /// A dense target of the input's shape, `[batch, class, pixels]`.
    Dense(FloatTensor<B>),
    /// Class indices, `[batch, 1, pixels]`.
    Indices(IntTensor<B>),
}

/// The pixels that count, as a backend's primitive.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub enum KernelMask<B: Backend> {
    /// Every pixel.
    All,
    /// `[batch, 1, pixels]` weights (0/1).
    Valid(FloatTensor<B>),
}

impl<B: Backend> KernelMask<B> {
    /// The weights, if any.
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            KernelMask::All => None,
            KernelMask::Valid(v) => Some(v),
        }
    }
}

/// The cross-entropy's class weights (`ce_weight`) of a kernel call, as a backend's primitive.
#[cfg(feature = "wgpu")]
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub enum KernelClassWeight<B: Backend> {
    /// Every class weighs 1 (or no cross-entropy term).
    Unweighted,
    /// `[class]` weights.
    Weighted(FloatTensor<B>),
}

#[cfg(feature = "wgpu")]
impl<B: Backend> KernelClassWeight<B> {
    /// The weights, if any.
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            KernelClassWeight::Unweighted => None,
            KernelClassWeight::Weighted(w) => Some(w),
        }
    }
}

/// What a device kernel found in the data it read, still on the device.
#[cfg(feature = "wgpu")]
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub enum KernelVerdict<B: Backend> {
    /// The call asked for no checks.
    Unchecked,
    /// `[4]` `f32`: see `crate::kernels::input::Verdict::Device`.
    Flags(FloatTensor<B>),
}
