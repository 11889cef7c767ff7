//! Configs from outside: every loss config round-trips through JSON; every invalid value is
//! an error from `validate` / `try_init` naming the field and the value (and `init` panics with
//! the same message); random and hostile JSON is an error, never a panic.

use burn::config::Config;
use burn_dice::{
    Activation, ConfigError, DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, DiceReduction,
    GeneralizedDiceLossConfig, TverskyLossConfig, WeightType,
};
use burn_dice_tests::XorShift;
use serde_json::{json, Value};

type B = burn_flex::Flex;

/// Class weights, or none.
fn weights(r: &mut XorShift) -> Option<Vec<f32>> {
    r.bool().then(|| {
        (0..1 + r.below(5))
            .map(|_| (r.unit() * 3.0) as f32)
            .collect()
    })
}

fn random_dice(r: &mut XorShift) -> DiceLossConfig {
    let activation =
        [Activation::None, Activation::Sigmoid, Activation::Softmax][r.below(3) as usize];
    DiceLossConfig::new()
        .with_activation(activation)
        .with_include_background(r.bool())
        .with_smooth_nr(r.unit() * 1e-3)
        .with_smooth_dr(r.unit())
        .with_squared_pred(r.bool())
        .with_jaccard(r.bool())
        .with_batch(r.bool())
        .with_weight(weights(r))
        .with_ignore_index(r.bool().then(|| r.below(256) as usize))
        .with_log_loss(r.bool())
        .with_reduction([DiceReduction::Mean, DiceReduction::Sum][r.below(2) as usize])
        .with_check_inputs(r.bool())
}

/// A config's JSON.
fn json_of(config: &impl Config) -> Value {
    serde_json::to_value(config).unwrap()
}

/// A config back from its JSON gives the same JSON.
fn round_trip<C: Config>(config: &C) {
    let text = serde_json::to_string(config).unwrap();
    let back: C = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(json_of(&back), json_of(config), "{text}");
}

#[test]
fn random_configs_round_trip_through_json_and_validate() {
    let mut r = XorShift::new(0xc0f1);
    for _ in 0..500 {
        let dice = random_dice(&mut r);
        round_trip(&dice);
        assert_eq!(dice.validate(), Ok(()));
        let gd = GeneralizedDiceLossConfig::new()
            .with_weight_type(
                [WeightType::Square, WeightType::Simple, WeightType::Uniform][r.below(3) as usize],
            )
            .with_smooth_nr(r.unit())
            .with_smooth_dr(r.unit())
            .with_batch(r.bool());
        round_trip(&gd);
        assert_eq!(gd.validate(), Ok(()));
        let tversky = TverskyLossConfig::new()
            .with_alpha(r.unit())
            .with_beta(r.unit())
            .with_gamma(0.1 + r.unit() * 3.0);
        round_trip(&tversky);
        assert_eq!(tversky.validate(), Ok(()));
        let ce = DiceCELossConfig::new()
            .with_dice(random_dice(&mut r))
            .with_lambda_dice(r.unit() * 2.0)
            .with_lambda_ce(r.unit() * 2.0)
            .with_ce_weight(weights(&mut r))
            .with_label_smoothing(r.unit())
            .with_pos_weight(r.bool().then(|| (r.unit() * 4.0) as f32));
        round_trip(&ce);
        assert_eq!(ce.validate(), Ok(()));
        let focal = DiceFocalLossConfig::new()
            .with_dice(random_dice(&mut r))
            .with_gamma(r.unit() * 4.0)
            .with_alpha(r.bool().then(|| r.unit()));
        round_trip(&focal);
        assert_eq!(focal.validate(), Ok(()));
    }
}

/// Parses `json` as `C`, checks that `validate` and `try_init` give the error naming `field`
/// and `value`, and that `init` panics with its message.
fn rejects<C>(json: Value, field: &str, value: &str)
where
    C: Config + Validated,
{
    let config: C = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{e}: {json}"));
    let err = config.check().expect_err(&json.to_string());
    assert_eq!(
        (err.field.as_str(), err.value.as_str()),
        (field, value),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("`{field}`")) && message.contains(value),
        "{message}"
    );
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.init_panicking()))
        .expect_err("init must panic");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(text, message);
}

/// The three ways to build a loss from a config, for [`rejects`].
trait Validated {
    fn check(&self) -> Result<(), ConfigError>;
    fn init_panicking(&self);
}

macro_rules! validated {
    ($($config:ty),*) => {$(
        impl Validated for $config {
            fn check(&self) -> Result<(), ConfigError> {
                let validated = self.validate();
                let tried = self.try_init::<B>(&Default::default()).map(|_| ());
                assert_eq!(validated, tried, "validate and try_init agree");
                validated
            }
            fn init_panicking(&self) {
                let _loss = self.init::<B>(&Default::default());
            }
        }
    )*};
}

validated!(
    DiceLossConfig,
    GeneralizedDiceLossConfig,
    TverskyLossConfig,
    DiceCELossConfig,
    DiceFocalLossConfig
);

fn with(config: &impl Config, field: &str, value: Value) -> Value {
    let mut json = json_of(config);
    let mut slot = &mut json;
    let path: Vec<&str> = field.split('.').collect();
    for key in &path[..path.len() - 1] {
        slot = &mut slot[*key];
    }
    slot[path[path.len() - 1]] = value;
    json
}

#[test]
fn every_invalid_value_is_an_error_naming_field_and_value() {
    let dice = DiceLossConfig::new();
    rejects::<DiceLossConfig>(with(&dice, "smooth_nr", json!(-1.0)), "smooth_nr", "-1.0");
    rejects::<DiceLossConfig>(
        with(&dice, "smooth_dr", json!(-1e-300)),
        "smooth_dr",
        "-1e-300",
    );
    rejects::<DiceLossConfig>(with(&dice, "weight", json!([])), "weight", "an empty list");
    rejects::<DiceLossConfig>(
        with(&dice, "weight", json!([1.0, -0.5])),
        "weight[1]",
        "-0.5",
    );
    rejects::<DiceLossConfig>(with(&dice, "weight", json!([1e39])), "weight[0]", "inf");
    let gd = GeneralizedDiceLossConfig::new();
    rejects::<GeneralizedDiceLossConfig>(with(&gd, "smooth_dr", json!(-2.0)), "smooth_dr", "-2.0");
    let tv = TverskyLossConfig::new();
    rejects::<TverskyLossConfig>(with(&tv, "alpha", json!(-0.1)), "alpha", "-0.1");
    rejects::<TverskyLossConfig>(with(&tv, "beta", json!(-3.0)), "beta", "-3.0");
    rejects::<TverskyLossConfig>(with(&tv, "gamma", json!(0.0)), "gamma", "0.0");
    let ce = DiceCELossConfig::new();
    rejects::<DiceCELossConfig>(with(&ce, "lambda_ce", json!(-1.0)), "lambda_ce", "-1.0");
    rejects::<DiceCELossConfig>(
        with(&ce, "lambda_dice", json!(-1e308)),
        "lambda_dice",
        "-1e308",
    );
    rejects::<DiceCELossConfig>(
        with(&ce, "label_smoothing", json!(1.5)),
        "label_smoothing",
        "1.5",
    );
    rejects::<DiceCELossConfig>(
        with(&ce, "ce_weight", json!([0.5, -1.0])),
        "ce_weight[1]",
        "-1.0",
    );
    rejects::<DiceCELossConfig>(with(&ce, "pos_weight", json!(-2.0)), "pos_weight", "-2.0");
    rejects::<DiceCELossConfig>(
        with(&ce, "dice.smooth_dr", json!(-1.0)),
        "dice.smooth_dr",
        "-1.0",
    );
    let focal = DiceFocalLossConfig::new();
    rejects::<DiceFocalLossConfig>(with(&focal, "alpha", json!(1.5)), "alpha", "1.5");
    rejects::<DiceFocalLossConfig>(with(&focal, "alpha", json!(-0.01)), "alpha", "-0.01");
    rejects::<DiceFocalLossConfig>(with(&focal, "gamma", json!(-1.0)), "gamma", "-1.0");
    rejects::<DiceFocalLossConfig>(
        with(&focal, "lambda_focal", json!(-1.0)),
        "lambda_focal",
        "-1.0",
    );
    rejects::<DiceFocalLossConfig>(
        with(&focal, "dice.weight", json!([f32::MAX, -1.0])),
        "dice.weight[1]",
        "-1.0",
    );
    // Values built in code, which JSON cannot carry (NaN), are caught the same way.
    let err = DiceLossConfig::new()
        .with_smooth_nr(f64::NAN)
        .validate()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "DiceLossConfig: `smooth_nr` must be finite and >= 0, got NaN"
    );
}

#[test]
fn hostile_json_is_an_error_never_a_panic() {
    let valid = DiceCELossConfig::new().to_string();
    let mut documents: Vec<String> = vec![
        String::new(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "{\"dice\": 3}".into(),
        valid.replace("false", "\"false\""),
        valid.replace("1.0", "\"one\""),
        valid.replace("1.0", "1e400"),
        valid.replace("1.0", "-1e400"),
        valid.replace("\"Mean\"", "\"Median\""),
        valid.replace("\"Softmax\"", "42"),
        valid.replace('}', ""),
        valid[..valid.len() / 2].to_string(),
        format!("{valid}{valid}"),
        "{".repeat(10_000),
    ];
    // Random mutations of a valid document: bytes replaced, cut, duplicated.
    let mut r = XorShift::new(0x4057);
    let bytes = valid.as_bytes();
    for _ in 0..2000 {
        let mut doc = bytes.to_vec();
        for _ in 0..1 + r.below(4) {
            let at = r.below(doc.len() as u64) as usize;
            match r.below(3) {
                0 => doc[at] = b"{}[]:,\"0123456789-.eEtruefalsnul x"[r.below(33) as usize],
                1 => doc.truncate(at),
                _ => {
                    let piece = doc[at..].to_vec();
                    doc.extend_from_slice(&piece);
                }
            }
            if doc.is_empty() {
                break;
            }
        }
        documents.push(String::from_utf8_lossy(&doc).into_owned());
    }
    let (mut parsed, mut rejected) = (0, 0);
    for doc in &documents {
        let outcome = std::panic::catch_unwind(|| {
            match serde_json::from_str::<DiceCELossConfig>(doc) {
                // What parses is either valid or an error naming a field: never a panic.
                Ok(config) => match config.try_init::<B>(&Default::default()) {
                    Ok(_) => true,
                    Err(e) => {
                        assert!(!e.field.is_empty(), "{e}");
                        false
                    }
                },
                Err(_) => false,
            }
        });
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => rejected += 1,
            Err(_) => panic!("panicked on {doc:?}"),
        }
    }
    assert!(
        rejected > documents.len() / 2,
        "{parsed} parsed, {rejected} rejected"
    );
    // Unknown fields are ignored (burn's `Config` derive), missing optional fields are `None`,
    // a missing required field is an error that names it.
    let mut json: Value = serde_json::from_str(&valid).unwrap();
    json["smoth_nr"] = json!(5.0);
    json.as_object_mut().unwrap().remove("ce_weight");
    let back: DiceCELossConfig = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back.ce_weight, None);
    json.as_object_mut().unwrap().remove("lambda_ce");
    let err = serde_json::from_value::<DiceCELossConfig>(json).unwrap_err();
    assert!(err.to_string().contains("lambda_ce"), "{err}");
}

/// `tests/fixtures/configs.json`: one config per loss with every top-level field away from
/// its default, shared by both release lines. Each loads into this line's config type, is
/// written back unchanged (the same field names, types and values) and validates; the other
/// line runs the same test on the same file.
#[test]
fn the_config_file_shared_by_both_lines_loads_and_writes_back_unchanged() {
    let file: Value = serde_json::from_str(include_str!("fixtures/configs.json")).unwrap();
    fn check<C: Config>(file: &Value, name: &str, defaults: C) -> C {
        let json = file[name].clone();
        let config: C =
            serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(json_of(&config), json, "{name} written back");
        let defaults = json_of(&defaults);
        for (field, value) in json.as_object().unwrap() {
            assert_ne!(&defaults[field], value, "{name}.{field} is its default");
        }
        config
    }
    check(&file, "DiceLossConfig", DiceLossConfig::new())
        .validate()
        .unwrap();
    check(
        &file,
        "GeneralizedDiceLossConfig",
        GeneralizedDiceLossConfig::new(),
    )
    .validate()
    .unwrap();
    check(&file, "TverskyLossConfig", TverskyLossConfig::new())
        .validate()
        .unwrap();
    check(&file, "DiceCELossConfig", DiceCELossConfig::new())
        .validate()
        .unwrap();
    check(&file, "DiceFocalLossConfig", DiceFocalLossConfig::new())
        .validate()
        .unwrap();
}
