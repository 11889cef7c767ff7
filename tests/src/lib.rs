//! Shared helpers of the workspace-level tests: the MONAI fixtures (embedded, so a test binary
//! runs anywhere without the source tree), tensor construction, tolerances, and the backends
//! every numeric test runs on.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_dice::{
    DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceTarget, GeneralizedDiceLossConfig,
    TverskyLossConfig,
};
use serde::Deserialize;

pub mod crosscheck;
pub mod gpubench;
pub mod parity;
pub mod props;

/// A seeded xorshift64 generator: the tests' random cases and data are the same on every run.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator whose sequence depends only on `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A fair coin.
    pub fn bool(&mut self) -> bool {
        self.below(2) == 1
    }
}

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

/// A fixture file.
#[derive(Debug, Deserialize)]
pub struct FixtureFile {
    /// MONAI version that produced the references.
    pub monai_version: String,
    /// The cases.
    pub cases: Vec<Case>,
}

/// One MONAI reference case.
#[derive(Debug, Deserialize)]
pub struct Case {
    /// Unique name.
    pub name: String,
    /// The burn-dice config, in its own serde form.
    pub config: serde_json::Value,
    /// Input shape `[batch, class, *spatial]`.
    pub shape: Vec<usize>,
    /// `"dense"` or `"index"`.
    pub target_kind: String,
    /// Input values, row-major.
    pub input: Vec<f64>,
    /// Target values, row-major (class indices for `"index"`).
    pub target: Vec<f64>,
    /// MONAI's reduced loss.
    pub loss: f64,
    /// Shape of `per_class`.
    pub per_class_shape: Vec<usize>,
    /// MONAI's unreduced loss.
    pub per_class: Vec<f64>,
    /// MONAI's gradient of `loss` with respect to the input.
    pub grad: Vec<f64>,
    /// Spatial mask (masked Dice only).
    #[serde(default)]
    pub mask: Option<Vec<f64>>,
    /// Shape of `mask`.
    #[serde(default)]
    pub mask_shape: Option<Vec<usize>>,
}

/// `defaults` (a serialized config) with the fields of `fixture` written over it, recursively
/// (nested configs keep the defaults of the fields the fixture does not name).
pub fn merge_json(defaults: &mut serde_json::Value, fixture: &serde_json::Value) {
    match (defaults.as_object_mut(), fixture.as_object()) {
        (Some(d), Some(f)) => {
            for (key, value) in f {
                match d.get_mut(key) {
                    Some(slot) if slot.is_object() && value.is_object() => merge_json(slot, value),
                    _ => {
                        d.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => *defaults = fixture.clone(),
    }
}

/// Parses a fixture config into burn-dice config `C` over `C`'s defaults.
pub fn parse_config<C: serde::Serialize + serde::de::DeserializeOwned>(
    defaults: C,
    fixture: &serde_json::Value,
    name: &str,
) -> C {
    let mut config = serde_json::to_value(defaults).expect("config serializes");
    merge_json(&mut config, fixture);
    serde_json::from_value(config).unwrap_or_else(|e| panic!("{name}: config does not parse: {e}"))
}

impl Case {
    /// The case's config, parsed as burn-dice's own serde form (fields the fixture does not
    /// name keep their defaults).
    pub fn dice_config(&self) -> DiceLossConfig {
        parse_config(DiceLossConfig::new(), &self.config, &self.name)
    }

    /// The case's config as a [`GeneralizedDiceLossConfig`].
    pub fn generalized_dice_config(&self) -> GeneralizedDiceLossConfig {
        parse_config(GeneralizedDiceLossConfig::new(), &self.config, &self.name)
    }

    /// The case's config as a [`TverskyLossConfig`].
    pub fn tversky_config(&self) -> TverskyLossConfig {
        parse_config(TverskyLossConfig::new(), &self.config, &self.name)
    }

    /// The case's config as a [`DiceCELossConfig`].
    pub fn dice_ce_config(&self) -> DiceCELossConfig {
        parse_config(DiceCELossConfig::new(), &self.config, &self.name)
    }

    /// The case's config as a [`DiceFocalLossConfig`].
    pub fn dice_focal_config(&self) -> DiceFocalLossConfig {
        parse_config(DiceFocalLossConfig::new(), &self.config, &self.name)
    }

    /// The spatial mask of rank `D` (masked Dice cases).
    pub fn mask<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        let (mask, shape) = self
            .mask
            .clone()
            .zip(self.mask_shape.clone())
            .unwrap_or_else(|| panic!("{}: no mask", self.name));
        Tensor::from_data(TensorData::new(mask, shape), device)
    }

    /// Input tensor of rank `D`.
    pub fn input<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(self.input.clone(), self.shape.clone()),
            device,
        )
    }

    /// Target of rank `D`: dense float or class indices `[batch, 1, *spatial]`.
    pub fn target<B: Backend, const D: usize>(&self, device: &B::Device) -> DiceTarget<B, D> {
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
    serde_json::from_str(DICE_LOSS_FIXTURES).expect("fixture JSON parses")
}

/// Parses one of the embedded family fixture files by name (see [`FAMILY_FIXTURES`] and
/// [`SOFT_FIXTURES`]).
pub fn family_fixtures(name: &str) -> FixtureFile {
    let (_, json) = FAMILY_FIXTURES
        .iter()
        .chain(&SOFT_FIXTURES)
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture file {name}"));
    serde_json::from_str(json).expect("fixture JSON parses")
}

/// Reads a tensor back as `f64` values.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("float data")
}

/// Relative error of `got` against `expected`, with an absolute floor of `floor`.
pub fn rel_err(got: f64, expected: f64, floor: f64) -> f64 {
    if got.is_nan() && expected.is_nan() {
        return 0.0;
    }
    (got - expected).abs() / expected.abs().max(floor)
}

/// Worst relative error of two equally long slices (`floor` as in [`rel_err`]).
pub fn worst_rel_err(got: &[f64], expected: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), expected.len(), "lengths differ");
    got.iter()
        .zip(expected)
        .map(|(&g, &e)| rel_err(g, e, floor))
        .fold(0.0, f64::max)
}

/// Worst error of a gradient, relative to the largest reference component (gradient entries
/// close to 0 are compared on the scale of the whole gradient).
pub fn grad_err(got: &[f64], expected: &[f64]) -> f64 {
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    assert_eq!(got.len(), expected.len(), "lengths differ");
    got.iter()
        .zip(expected)
        .map(|(g, e)| (g - e).abs() / scale)
        .fold(0.0, f64::max)
}

/// burn-wgpu with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuAutodiff = burn_autodiff::Autodiff<burn_wgpu::Wgpu>;

/// Whether `BURN_DICE_REQUIRE` (a comma-separated list; `.ci/run` sets `wgpu,mri-data`) names
/// `what`: a test that needs it then fails when the machine lacks it, instead of skipping.
pub fn required(what: &str) -> bool {
    std::env::var("BURN_DICE_REQUIRE").is_ok_and(|v| v.split(',').any(|w| w.trim() == what))
}

/// A test needs `what`, which this machine lacks (`why`, with what to install): it fails when
/// [`required`] asks for `what`, and otherwise says on stderr that it did not run (shown with
/// `cargo test -- --nocapture`) so that the caller can return.
pub fn missing(what: &str, why: &str) {
    if required(what) {
        panic!("{why} (BURN_DICE_REQUIRE asks for `{what}`)");
    }
    eprintln!("skipped, needs `{what}`: {why}");
}

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
