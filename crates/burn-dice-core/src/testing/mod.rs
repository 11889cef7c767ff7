//! What the tests of both release lines share and compute without burn (feature `testing`;
//! not part of the crate's API promise): a seeded generator, the MONAI fixtures' format and
//! the comparisons with their tolerances, the random cases of the property tests with their f64
//! reference, and the switch that turns a missing test prerequisite from a skip into a failure.
//!
//! The fixture files themselves (`tests/fixtures/*.json`, written from MONAI by
//! `tests/fixtures/gen*.py`) stay one set in the repository; each line's tests embed them and
//! parse them with [`FixtureFile::parse`].

pub mod props;

use serde::Deserialize;

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

/// Moves the soft targets `soft` (`[b, c, n]`, in `[0, 1)`) at least `gap` away from every
/// prediction a kernel test makes of them: the sigmoid and the softmax (over `c`) of the
/// logits `x`, and the probabilities `probs` (`[b, c, n]` each). With `soft_label` the
/// gradient has a step where `p·w = t·w` (`sgn(pw − tw)`), so a `p` within f32 rounding of its
/// `t` may fall on either side of it in f32 and in f64: a gradient that differs by a whole
/// term, by chance (about once in five runs of 10⁶ random soft targets), though both are
/// right. A moved target is shifted by `2·gap` (wrapping in `[0, 1)`) until it is clear.
pub fn soft_targets_clear_of_predictions(
    soft: &mut [f32],
    x: &[f32],
    probs: &[f32],
    [b, c, n]: [usize; 3],
    gap: f32,
) {
    assert!(
        soft.len() == b * c * n && x.len() == soft.len() && probs.len() == soft.len(),
        "soft targets, logits and probabilities of [{b}, {c}, {n}]"
    );
    for s in 0..b {
        for i in 0..n {
            let at = |k: usize| (s * c + k) * n + i;
            let max = (0..c).map(|k| x[at(k)] as f64).fold(f64::MIN, f64::max);
            let sum: f64 = (0..c).map(|k| (x[at(k)] as f64 - max).exp()).sum();
            for k in 0..c {
                let v = x[at(k)] as f64;
                let preds = [
                    1.0 / (1.0 + (-v).exp()),
                    (v - max).exp() / sum,
                    probs[at(k)] as f64,
                ];
                let t = &mut soft[at(k)];
                // At most one shift per prediction (each shift moves `2·gap`).
                for _ in 0..=preds.len() {
                    if preds.iter().all(|&p| (p - *t as f64).abs() >= gap as f64) {
                        break;
                    }
                    *t = (*t + 2.0 * gap).rem_euclid(1.0);
                }
            }
        }
    }
}

/// A fixture file.
#[derive(Debug, Deserialize)]
pub struct FixtureFile {
    /// MONAI version that produced the references.
    pub monai_version: String,
    /// The cases.
    pub cases: Vec<Case>,
}

impl FixtureFile {
    /// Parses a fixture file's JSON.
    ///
    /// # Panics
    /// If `json` is not a fixture file.
    pub fn parse(json: &str) -> FixtureFile {
        serde_json::from_str(json).expect("fixture JSON parses")
    }
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

/// Whether a GPU adapter works: `probe` runs a tiny computation on the device and panics where
/// none does. Without one, [`missing`] says so (naming what to install on a machine without a
/// GPU) or fails where `BURN_DICE_REQUIRE` asks for `wgpu`; never the runtime's own panic deep in
/// a test. One copy for every wgpu test of both release lines.
pub fn gpu_adapter_works(probe: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    match std::panic::catch_unwind(probe) {
        Ok(()) => true,
        Err(e) => {
            let e = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            missing(
                "wgpu",
                &format!(
                    "no GPU adapter works ({e}). On a machine without a GPU install Mesa's \
                     software Vulkan driver: `apt-get install -y libvulkan1 mesa-vulkan-drivers` \
                     (lavapipe)"
                ),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_targets_are_moved_clear_of_every_prediction() {
        // One sample, two classes (logits `[0, 1, -2]` and `[0, 1, 2]`), three pixels.
        let x = [0.0f32, 1.0, -2.0, 0.0, 1.0, 2.0];
        let probs = [0.9f32, 0.9, 0.3, 0.9, 0.9, 0.9];
        // On σ(0); on the softmax of equal logits; on a probability; on σ(0); clear; clear.
        let mut soft = [0.5f32, 0.5, 0.3, 0.5, 0.2, 0.4];
        let before = soft;
        soft_targets_clear_of_predictions(&mut soft, &x, &probs, [1, 2, 3], 1e-3);
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        for (i, (&t, &old)) in soft.iter().zip(&before).enumerate() {
            let (k, px) = (i / 3, i % 3);
            let softmax = 1.0 / (1.0 + (x[(1 - k) * 3 + px] - x[i]).exp());
            for p in [sigmoid(x[i]), softmax, probs[i]] {
                assert!(
                    (p - t).abs() >= 1e-3 - 1e-6,
                    "target {i}: {t} vs {p} (was {old})"
                );
            }
            assert!((0.0..1.0).contains(&t), "target {i}: {t}");
            assert_eq!(t == old, i >= 4, "target {i} moved: {old} -> {t}");
        }
    }

    #[test]
    fn xorshift_is_seeded_and_in_range() {
        let (mut a, mut b) = (XorShift::new(0), XorShift::new(0));
        let first: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert!(first.iter().all(|&v| v != 0), "seed 0 must not stick at 0");
        let mut r = XorShift::new(7);
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            assert!(r.below(3) < 3);
        }
    }

    #[test]
    fn a_fixture_file_parses_with_its_optional_fields() {
        let json = r#"{"monai_version": "1.5.2", "cases": [{"name": "n", "config": {"jaccard": true},
            "shape": [1, 2, 2], "target_kind": "index", "input": [0.1, 0.2, 0.3, 0.4],
            "target": [0, 1], "loss": 0.5, "per_class_shape": [1, 2], "per_class": [0.4, 0.6],
            "grad": [0.0, 0.0, 0.0, 0.0]}]}"#;
        let file = FixtureFile::parse(json);
        assert_eq!(file.monai_version, "1.5.2");
        let case = &file.cases[0];
        assert_eq!((case.shape.as_slice(), case.loss), (&[1, 2, 2][..], 0.5));
        assert!(case.mask.is_none() && case.mask_shape.is_none());
    }

    #[test]
    fn a_config_merges_over_its_defaults_recursively() {
        let mut defaults = serde_json::json!({"a": 1, "nested": {"x": 1, "y": 2}});
        merge_json(
            &mut defaults,
            &serde_json::json!({"nested": {"y": 3}, "b": true}),
        );
        assert_eq!(
            defaults,
            serde_json::json!({"a": 1, "nested": {"x": 1, "y": 3}, "b": true})
        );
    }

    #[test]
    fn errors_are_relative_with_a_floor() {
        assert_eq!(rel_err(1.1, 1.0, 1e-6), 0.10000000000000009);
        assert_eq!(rel_err(f64::NAN, f64::NAN, 1.0), 0.0);
        assert_eq!(
            worst_rel_err(&[1.0, 2.2], &[1.0, 2.0], 1.0),
            0.10000000000000009
        );
        // Relative to the largest reference component.
        assert_eq!(grad_err(&[0.0, 1.5], &[0.5, 2.0]), 0.25);
    }
}
