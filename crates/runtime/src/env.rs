//! Typed configuration from environment variables.
//!
//! Binaries read the process environment once, at start-up, into an [`Env`];
//! tests build an [`Env`] from pairs and never touch the process environment.
//! Every error names the variable, so a bad deployment stops with a message
//! that says what to fix.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// A snapshot of environment variables. Its `Debug` lists the names only:
/// the values include secrets (`FILAMENT_TOKEN_SECRET`, `DATABASE_URL`).
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required but not set")]
    Missing { name: &'static str },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

impl Env {
    /// The environment of this process.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value, if set and not empty.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The parsed value, or `None` when unset or empty.
    pub fn optional<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.raw(name)
            .map(|value| {
                value.parse().map_err(|err: T::Err| ConfigError::Invalid {
                    name,
                    value: value.to_owned(),
                    reason: err.to_string(),
                })
            })
            .transpose()
    }

    /// The parsed value, or `default` when unset or empty.
    pub fn or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// The parsed value; unset is an error.
    pub fn required<T>(&self, name: &'static str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.optional(name)?.ok_or(ConfigError::Missing { name })
    }

    /// A comma-separated list; unset gives an empty list.
    pub fn list<T>(&self, name: &'static str) -> Result<Vec<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let Some(raw) = self.raw(name) else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse().map_err(|err: T::Err| ConfigError::Invalid {
                    name,
                    value: raw.to_owned(),
                    reason: err.to_string(),
                })
            })
            .collect()
    }

    /// A duration in whole seconds.
    pub fn secs_or(
        &self,
        name: &'static str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        self.duration_or(name, default, std::time::Duration::from_secs)
    }

    /// A duration in whole milliseconds.
    pub fn millis_or(
        &self,
        name: &'static str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        self.duration_or(name, default, std::time::Duration::from_millis)
    }

    /// A whole number of `unit`s.
    fn duration_or(
        &self,
        name: &'static str,
        default: std::time::Duration,
        unit: fn(u64) -> std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        Ok(self.optional::<u64>(name)?.map_or(default, unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_units() {
        use std::time::Duration;
        let env = Env::from_pairs([("S", "3"), ("MS", "250"), ("BAD", "1.5")]);
        let default = Duration::from_millis(7);
        assert_eq!(env.secs_or("S", default).unwrap(), Duration::from_secs(3));
        assert_eq!(
            env.millis_or("MS", default).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(env.millis_or("UNSET", default).unwrap(), default);
        assert!(env.millis_or("BAD", default).is_err());
    }

    #[test]
    fn parses_defaults_and_names_the_bad_variable() {
        let env = Env::from_pairs([("PORT", "80"), ("BAD", "x"), ("EMPTY", "")]);
        assert_eq!(env.or::<u16>("PORT", 1).unwrap(), 80);
        assert_eq!(env.or::<u16>("EMPTY", 7).unwrap(), 7);
        assert_eq!(env.or::<u16>("UNSET", 7).unwrap(), 7);
        let err = env.or::<u16>("BAD", 1).unwrap_err().to_string();
        assert!(err.starts_with("BAD=\"x\" is invalid"), "{err}");
        let err = env.required::<u16>("UNSET").unwrap_err().to_string();
        assert_eq!(err, "UNSET is required but not set");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://user:s3cretpw@db/filament"),
            ("FILAMENT_TOKEN_SECRET", "a-token-secret-value"),
        ]);
        let printed = format!("{env:?}");
        assert!(printed.contains("DATABASE_URL"), "{printed}");
        assert!(!printed.contains("s3cretpw"), "{printed}");
        assert!(!printed.contains("a-token-secret-value"), "{printed}");
    }

    #[test]
    fn lists_are_comma_separated() {
        let env = Env::from_pairs([("L", "a, b,,c")]);
        assert_eq!(env.list::<String>("L").unwrap(), ["a", "b", "c"]);
        assert!(env.list::<String>("NONE").unwrap().is_empty());
    }
}
