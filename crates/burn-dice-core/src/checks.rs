//! The checks both release lines make of configs and data, with their messages: one copy, so
//! that a config or a bad batch fails with the same words on burn 0.21 and burn 0.22. Each
//! message names the loss, the argument or field, and what was expected.

/// What the data checks of a call are judged against: the input's channels and the valid
/// class indices.
#[derive(Debug, Clone, Copy)]
pub struct VerdictContext {
    /// Channels of the input.
    pub channels: usize,
    /// Class indices (rather than a dense target) were checked.
    pub labels: bool,
    /// Valid class indices are `0..n_labels`.
    pub n_labels: usize,
    /// The ignored label.
    pub ignore_index: Option<usize>,
}

/// The message for a class index `value` outside `0..n_labels`.
pub fn label_message(loss: &str, value: i64, context: VerdictContext) -> String {
    format!(
        "{loss}: `target` holds class index {value}, expected 0..{} (input has {} channel(s)){}",
        context.n_labels,
        context.channels,
        match context.ignore_index {
            Some(ii) => format!(" or the ignore_index {ii}"),
            None => String::new(),
        }
    )
}

/// The message for dense target values that are not in `[0, 1]` (NaN and infinities included)
/// in argument `name`.
pub fn dense_target_message(loss: &str, name: &str) -> String {
    format!(
        "{loss}: dense `{name}` holds NaN, infinite values or values outside [0, 1]; expected \
         one-hot, soft labels or probabilities in [0, 1]"
    )
}

/// The message for non-finite values in argument `name`.
pub fn finite_message(loss: &str, name: &str) -> String {
    format!("{loss}: `{name}` holds NaN or infinite values; expected finite numbers")
}

/// An invalid config field, as `DiceLossConfig::validate` and the other configs' `validate` /
/// `try_init` report it (in both release lines of burn-dice, which re-export this type as
/// `burn_dice::ConfigError`): the config, the field (a nested
/// config's field as `dice.smooth_nr`), the value it holds and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config type, e.g. `DiceLossConfig`.
    pub config: String,
    /// The field, e.g. `smooth_dr` or `weight[2]`.
    pub field: String,
    /// The value it holds, as written in the message.
    pub value: String,
    /// What the field must be.
    pub expected: String,
}

impl ConfigError {
    /// The error of `field` of `loss`'s config (`DiceLoss` → `DiceLossConfig`), which holds
    /// `value` where `expected` was expected.
    pub fn new(loss: &str, field: &str, value: impl std::fmt::Debug, expected: &str) -> Self {
        Self {
            config: format!("{loss}Config"),
            field: field.to_string(),
            // `Debug`: the shortest form that reads back as the same number (`-1e-300`).
            value: format!("{value:?}").trim_matches('"').to_string(),
            expected: expected.to_string(),
        }
    }

    /// The error of a nested config (`field` of `loss`'s config), reported as `loss`'s.
    pub fn within(self, loss: &str, field: &str) -> Self {
        Self {
            config: format!("{loss}Config"),
            field: format!("{field}.{}", self.field),
            ..self
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: `{}` must be {}, got {}",
            self.config, self.field, self.expected, self.value
        )
    }
}

impl std::error::Error for ConfigError {}

/// The value of `init` for a config that `validate`s: burn's convention, a panic with the
/// error's message.
pub fn or_panic<T>(result: Result<T, ConfigError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// A smoothing term must be finite and non-negative.
pub fn check_smoothing(loss: &str, name: &str, value: f64) -> Result<(), ConfigError> {
    check_non_negative(loss, name, value)
}

/// Class weights (config field `name`) must be non-empty, finite and non-negative.
pub fn check_weights(loss: &str, name: &str, weight: &[f32]) -> Result<(), ConfigError> {
    if weight.is_empty() {
        return Err(ConfigError::new(
            loss,
            name,
            "an empty list",
            "a list of one weight per class",
        ));
    }
    match weight
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
    {
        Some((i, w)) => Err(ConfigError::new(
            loss,
            &format!("{name}[{i}]"),
            w,
            "finite and >= 0",
        )),
        None => Ok(()),
    }
}

/// A coefficient must be finite and non-negative.
pub fn check_non_negative(loss: &str, name: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(loss, name, value, "finite and >= 0"))
    }
}

/// A coefficient must be finite and positive.
pub fn check_positive(loss: &str, name: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(loss, name, value, "finite and > 0"))
    }
}

/// A value must lie in `[0, 1]`.
pub fn check_unit(loss: &str, name: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(loss, name, value, "in [0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_config_field_value_and_expectation() {
        let e = check_weights("DiceLoss", "weight", &[1.0, f32::NAN]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DiceLossConfig: `weight[1]` must be finite and >= 0, got NaN"
        );
        let e = check_weights("DiceLoss", "weight", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DiceLossConfig: `weight` must be a list of one weight per class, got an empty list"
        );
        let e = check_smoothing("TverskyLoss", "smooth_nr", -1e-300)
            .unwrap_err()
            .within("DiceCELoss", "dice");
        assert_eq!(
            e.to_string(),
            "DiceCELossConfig: `dice.smooth_nr` must be finite and >= 0, got -1e-300"
        );
        assert!(check_positive("TverskyLoss", "gamma", 0.0).is_err());
        assert!(check_unit("DiceCELoss", "label_smoothing", 1.5).is_err());
        assert_eq!(check_unit("DiceCELoss", "label_smoothing", 1.0), Ok(()));
    }

    #[test]
    fn data_messages() {
        let context = VerdictContext {
            channels: 3,
            labels: true,
            n_labels: 3,
            ignore_index: Some(255),
        };
        assert_eq!(
            label_message("DiceLoss", -2, context),
            "DiceLoss: `target` holds class index -2, expected 0..3 (input has 3 channel(s)) or \
             the ignore_index 255"
        );
        assert!(finite_message("DiceLoss", "input").starts_with("DiceLoss: `input` holds NaN"));
        assert!(dense_target_message("DiceLoss", "target").contains("outside [0, 1]"));
    }
}
