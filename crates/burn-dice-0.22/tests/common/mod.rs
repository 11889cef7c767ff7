//! Shared helpers of the burn 0.22 line's integration tests: the MONAI fixtures (the one set
//! in the repository's `tests/fixtures`, embedded), tensors of a fixture case, the parity run.
// Each test binary uses a part of these helpers.
#![allow(dead_code, unused_imports)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_dice::{
    DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};
pub use burn_dice_core::testing::{
    grad_err, parse_config, rel_err, worst_rel_err, Case, FixtureFile,
};

pub mod parity;
pub mod props;

/// `tests/fixtures/dice_loss.json`, written by `tests/fixtures/gen.py` from MONAI.
pub const DICE_LOSS_FIXTURES: &str = include_str!("../../../../tests/fixtures/dice_loss.json");

/// The family's fixture files (written by `tests/fixtures/gen.py`), by name.
pub const FAMILY_FIXTURES: [(&str, &str); 5] = [
    (
        "generalized_dice",
        include_str!("../../../../tests/fixtures/generalized_dice.json"),
    ),
    (
        "tversky",
        include_str!("../../../../tests/fixtures/tversky.json"),
    ),
    (
        "dice_ce",
        include_str!("../../../../tests/fixtures/dice_ce.json"),
    ),
    (
        "dice_focal",
        include_str!("../../../../tests/fixtures/dice_focal.json"),
    ),
    (
        "masked_dice",
        include_str!("../../../../tests/fixtures/masked_dice.json"),
    ),
];

/// The `soft_label` fixtures (MONAI 1.6, `tests/fixtures/gen_soft.py`), by name: the same loss
/// kinds as [`FAMILY_FIXTURES`] plus `soft_dice` (`DiceLoss`).
pub const SOFT_FIXTURES: [(&str, &str); 6] = [
    (
        "soft_dice",
        include_str!("../../../../tests/fixtures/soft_dice.json"),
    ),
    (
        "soft_generalized_dice",
        include_str!("../../../../tests/fixtures/soft_generalized_dice.json"),
    ),
    (
        "soft_tversky",
        include_str!("../../../../tests/fixtures/soft_tversky.json"),
    ),
    (
        "soft_dice_ce",
        include_str!("../../../../tests/fixtures/soft_dice_ce.json"),
    ),
    (
        "soft_dice_focal",
        include_str!("../../../../tests/fixtures/soft_dice_focal.json"),
    ),
    (
        "soft_masked_dice",
        include_str!("../../../../tests/fixtures/soft_masked_dice.json"),
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
    fn mask<const D: usize>(&self, device: &Device) -> Tensor<D>;
    /// Input tensor of rank `D`.
    fn input<const D: usize>(&self, device: &Device) -> Tensor<D>;
    /// Target of rank `D`: dense float or class indices `[batch, 1, *spatial]`.
    fn target<const D: usize>(&self, device: &Device) -> DiceTarget<D>;
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

    fn mask<const D: usize>(&self, device: &Device) -> Tensor<D> {
        let (mask, shape) = self
            .mask
            .clone()
            .zip(self.mask_shape.clone())
            .unwrap_or_else(|| panic!("{}: no mask", self.name));
        Tensor::from_data(TensorData::new(mask, shape), device)
    }

    fn input<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.input.clone(), self.shape.clone()),
            device,
        )
    }

    fn target<const D: usize>(&self, device: &Device) -> DiceTarget<D> {
        match self.target_kind.as_str() {
            "dense" => DiceTarget::Dense(Tensor::from_data(
                TensorData::new(self.target.clone(), self.shape.clone()),
                device,
            )),
            "index" => {
                let mut shape = self.shape.clone();
                shape[1] = 1;
                let labels: Vec<i64> = self.target.iter().map(|&v| v as i64).collect();
                DiceTarget::Indices(Tensor::<D, Int>::from_data(
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
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("float data")
}

/// The devices every numeric test runs on, with autodiff: burn-flex, and with the `wgpu`
/// feature burn-wgpu where an adapter works (see [`wgpu_device`]).
pub fn devices() -> Vec<(&'static str, Device)> {
    let flex = ("flex", Device::flex().autodiff());
    #[cfg(feature = "wgpu")]
    if let Some(device) = wgpu_device() {
        return vec![flex, ("wgpu", device.autodiff())];
    }
    vec![flex]
}

/// The default wgpu device where an adapter works (see
/// `burn_dice_core::testing::gpu_adapter_works`, which says why not, or fails under
/// `BURN_DICE_REQUIRE`, in each test that asks): `None` where none does.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<Device> {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let probe = device.clone();
    let works = burn_dice_core::testing::gpu_adapter_works(move || {
        let _ = Tensor::<1>::from_floats([1.0, 2.0], &probe)
            .sum()
            .into_scalar::<f32>();
    });
    works.then_some(device)
}
