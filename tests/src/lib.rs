//! Shared helpers of the workspace-level tests: the MONAI fixtures (embedded, so a test binary
//! runs anywhere without the source tree), tensor construction, tolerances, and the backends
//! every numeric test runs on.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_dice::{
    DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};
pub use burn_dice_core::testing::{
    grad_err, merge_json, missing, parse_config, rel_err, required, worst_rel_err, Case,
    FixtureFile, XorShift,
};

pub mod crosscheck;
pub mod gpubench;
pub mod parity;
pub mod props;

/// The CPU test backend with autodiff.
pub type NdArrayAutodiff = burn_autodiff::Autodiff<burn_ndarray::NdArray<f32>>;
/// The same in f64, for finite differences.
pub type NdArrayAutodiff64 = burn_autodiff::Autodiff<burn_ndarray::NdArray<f64>>;

/// `tests/fixtures/dice_loss.json`, written by `tests/fixtures/gen.py` from MONAI.
pub const DICE_LOSS_FIXTURES: &str = include_str!("../fixtures/dice_loss.json");

/// The family's fixture files (written by `tests/fixtures/gen.py`), by name.
pub const FAMILY_FIXTURES: [(&str, &str); 5] = [
    (
        "generalized_dice",
        include_str!("../fixtures/generalized_dice.json"),
    ),
    ("tversky", include_str!("../fixtures/tversky.json")),
    ("dice_ce", include_str!("../fixtures/dice_ce.json")),
    ("dice_focal", include_str!("../fixtures/dice_focal.json")),
    ("masked_dice", include_str!("../fixtures/masked_dice.json")),
];

/// The `soft_label` fixtures (MONAI 1.6, `tests/fixtures/gen_soft.py`), by name: the same loss
/// kinds as [`FAMILY_FIXTURES`] plus `soft_dice` (`DiceLoss`).
pub const SOFT_FIXTURES: [(&str, &str); 6] = [
    ("soft_dice", include_str!("../fixtures/soft_dice.json")),
    (
        "soft_generalized_dice",
        include_str!("../fixtures/soft_generalized_dice.json"),
    ),
    (
        "soft_tversky",
        include_str!("../fixtures/soft_tversky.json"),
    ),
    (
        "soft_dice_ce",
        include_str!("../fixtures/soft_dice_ce.json"),
    ),
    (
        "soft_dice_focal",
        include_str!("../fixtures/soft_dice_focal.json"),
    ),
    (
        "soft_masked_dice",
        include_str!("../fixtures/soft_masked_dice.json"),
    ),
];

/// The burn side of a MONAI [`Case`]: its config as each loss's, its tensors on a backend.
pub trait CaseTensors {
    /// The case's config, parsed as burn-dice's own serde form (fields the fixture does not
    /// name keep their defaults).
    fn dice_config(&self) -> DiceLossConfig;
    /// The case's config as a [`GeneralizedDiceLossConfig`].
    fn generalized_dice_config(&self) -> GeneralizedDiceLossConfig;
    /// The case's config as a [`TverskyLossConfig`].
    fn tversky_config(&self) -> TverskyLossConfig;
    /// The case's config as a [`DiceCELossConfig`].
    fn dice_ce_config(&self) -> DiceCELossConfig;
    /// The case's config as a [`DiceFocalLossConfig`].
    fn dice_focal_config(&self) -> DiceFocalLossConfig;
    /// The spatial mask of rank `D` (masked Dice cases).
    fn mask<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D>;
    /// Input tensor of rank `D`.
    fn input<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D>;
    /// Target of rank `D`: dense float or class indices `[batch, 1, *spatial]`.
    fn target<B: Backend, const D: usize>(&self, device: &B::Device) -> DiceTarget<B, D>;
}

impl CaseTensors for Case {
    fn dice_config(&self) -> DiceLossConfig {
        parse_config(DiceLossConfig::new(), &self.config, &self.name)
    }

    fn generalized_dice_config(&self) -> GeneralizedDiceLossConfig {
        parse_config(GeneralizedDiceLossConfig::new(), &self.config, &self.name)
    }

    fn tversky_config(&self) -> TverskyLossConfig {
        parse_config(TverskyLossConfig::new(), &self.config, &self.name)
    }

    fn dice_ce_config(&self) -> DiceCELossConfig {
        parse_config(DiceCELossConfig::new(), &self.config, &self.name)
    }

    fn dice_focal_config(&self) -> DiceFocalLossConfig {
        parse_config(DiceFocalLossConfig::new(), &self.config, &self.name)
    }

    fn mask<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        let (mask, shape) = self
            .mask
            .clone()
            .zip(self.mask_shape.clone())
            .unwrap_or_else(|| panic!("{}: no mask", self.name));
        Tensor::from_data(TensorData::new(mask, shape), device)
    }

    fn input<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(self.input.clone(), self.shape.clone()),
            device,
        )
    }

    fn target<B: Backend, const D: usize>(&self, device: &B::Device) -> DiceTarget<B, D> {
        match self.target_kind.as_str() {
            "dense" => DiceTarget::Dense(Tensor::from_data(
                TensorData::new(self.target.clone(), self.shape.clone()),
                device,
            )),
            "index" => {
                let mut shape = self.shape.clone();
                shape[1] = 1;
                let labels: Vec<i64> = self.target.iter().map(|&v| v as i64).collect();
                DiceTarget::Indices(Tensor::<B, D, Int>::from_data(
                    TensorData::new(labels, shape),
                    device,
                ))
            }
            other => panic!("{}: unknown target kind {other}", self.name),
        }
    }
}

/// Parses the embedded DiceLoss fixtures.
pub fn dice_loss_fixtures() -> FixtureFile {
    FixtureFile::parse(DICE_LOSS_FIXTURES)
}

/// Parses one of the embedded family fixture files by name (see [`FAMILY_FIXTURES`] and
/// [`SOFT_FIXTURES`]).
pub fn family_fixtures(name: &str) -> FixtureFile {
    let (_, json) = FAMILY_FIXTURES
        .iter()
        .chain(&SOFT_FIXTURES)
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture file {name}"));
    FixtureFile::parse(json)
}

/// Reads a tensor back as `f64` values.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("float data")
}

/// burn-wgpu with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuAutodiff = burn_autodiff::Autodiff<burn_wgpu::Wgpu>;

/// The default wgpu device, after checking once that an adapter works. Without one: `None`
/// (with [`missing`]'s message, which names what to install), or a failure where
/// `BURN_DICE_REQUIRE` asks for `wgpu`; never wgpu's own panic deep in the runtime.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<burn_wgpu::WgpuDevice> {
    use std::sync::OnceLock;
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let device = burn_wgpu::WgpuDevice::default();
    let status = CHECKED.get_or_init(|| {
        let d = device.clone();
        std::panic::catch_unwind(move || {
            let t = Tensor::<burn_wgpu::Wgpu, 1>::from_floats([1.0, 2.0], &d);
            let _ = t.sum().into_scalar();
        })
        .map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match status {
        Ok(()) => Some(device),
        Err(e) => {
            missing(
                "wgpu",
                &format!(
                    "no GPU adapter works ({e}). On a machine without a GPU install Mesa's \
                     software Vulkan driver: `apt-get install -y libvulkan1 mesa-vulkan-drivers` \
                     (lavapipe)"
                ),
            );
            None
        }
    }
}

/// The device memory in use now on a wgpu device (allocated tensors, not the pools' spare
/// room), in bytes.
#[cfg(feature = "wgpu")]
pub fn wgpu_bytes_in_use(device: &burn_wgpu::WgpuDevice) -> Option<u64> {
    use cubecl::Runtime;
    burn_wgpu::WgpuRuntime::client(device)
        .memory_usage()
        .ok()
        .map(|usage| usage.bytes_in_use)
}

/// Instantiates generic test functions once per backend, in a module per backend.
///
/// ```text
/// backend_tests!(my_check, other_check);
/// // expands to `mod ndarray { #[test] fn my_check() { super::my_check::<NdArrayAutodiff>(&Default::default()) } ... }`
/// // and, with the `wgpu` feature, the same in `mod wgpu` on `WgpuAutodiff` (skipped where no
/// // adapter works, see `wgpu_device`).
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod ndarray {
            $(
                #[test]
                fn $name() {
                    super::$name::<$crate::NdArrayAutodiff>(&Default::default());
                }
            )*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(
                #[test]
                fn $name() {
                    if let Some(device) = $crate::wgpu_device() {
                        super::$name::<$crate::WgpuAutodiff>(&device);
                    }
                }
            )*
        }
    };
}
