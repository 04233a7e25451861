//! Secrets held in configs that derive `Debug`, so the config can still be
//! logged. Connection URLs that may hold a password
//! (`postgres://user:pw@host/db`, `redis://:pw@host`, sqlx's
//! `?password=`): [`SecretUrl`] prints the URL with the password replaced
//! by [`REDACTED`]. Keys: [`SecretBytes`] prints only its length. The one
//! place secrets are redacted.

use std::borrow::Cow;
use std::fmt;

/// What a password is replaced with.
pub const REDACTED: &str = "<redacted>";

/// A connection URL whose `Debug` and `Display` never show its password;
/// [`SecretUrl::expose`] is the URL to connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, password included: for connecting, never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password.
    pub fn redacted(&self) -> Cow<'_, str> {
        redact_url(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A key (a token-signing secret) whose `Debug` shows only its length;
/// [`SecretBytes::expose`] is the key to use.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The key itself: for signing and checking, never for a log.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REDACTED} ({} bytes)", self.0.len())
    }
}

/// `url` with the password of its user info (`user:password@`) and the
/// value of any `password=` query parameter replaced by [`REDACTED`]. It
/// errs on the side of hiding: everything up to the last `@` is user info.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    let (userinfo, host) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, rest),
    };
    let user = userinfo.and_then(|userinfo| userinfo.split_once(':').map(|(user, _)| user));
    let host = redact_password_parameter(host);
    if user.is_none() && matches!(host, Cow::Borrowed(_)) {
        return Cow::Borrowed(url);
    }
    Cow::Owned(match (user, userinfo) {
        (Some(user), _) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        (None, Some(userinfo)) => format!("{scheme}://{userinfo}@{host}"),
        (None, None) => format!("{scheme}://{host}"),
    })
}

/// `rest` with the value of each `password=` query parameter redacted.
fn redact_password_parameter(rest: &str) -> Cow<'_, str> {
    let Some((path, query)) = rest.split_once('?') else {
        return Cow::Borrowed(rest);
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let mut changed = false;
    let parameters: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                changed = true;
                Cow::Owned(format!("{name}={REDACTED}"))
            }
            _ => Cow::Borrowed(parameter),
        })
        .collect();
    if !changed {
        return Cow::Borrowed(rest);
    }
    let mut redacted = format!("{path}?{}", parameters.join("&"));
    if let Some(fragment) = fragment {
        redacted.push('#');
        redacted.push_str(fragment);
    }
    Cow::Owned(redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_prints_only_its_length() {
        let key = SecretBytes::new(b"a-signing-key-nobody-may-read-in-logs".to_vec());
        let shown = format!("{key:?}");
        assert_eq!(shown, "<redacted> (37 bytes)");
        assert_eq!(key.expose(), b"a-signing-key-nobody-may-read-in-logs");
    }

    #[test]
    fn passwords_never_print_and_the_rest_of_the_url_does() {
        for (url, shown) in [
            (
                "postgres://filament:s3cretpw@db.internal:5432/filament?sslmode=require",
                "postgres://filament:<redacted>@db.internal:5432/filament?sslmode=require",
            ),
            (
                "redis://:s3cretpw@redis:6379/0",
                "redis://:<redacted>@redis:6379/0",
            ),
            (
                "rediss://default:s3cretpw@redis:6380",
                "rediss://default:<redacted>@redis:6380",
            ),
            (
                "postgres://filament@db/filament?password=s3cretpw&sslmode=disable",
                "postgres://filament@db/filament?password=<redacted>&sslmode=disable",
            ),
            // An unencoded `@` in the password still hides all of it.
            (
                "postgres://u:s3cret@pw@db/x",
                "postgres://u:<redacted>@db/x",
            ),
            (
                "postgres://filament@db/filament",
                "postgres://filament@db/filament",
            ),
            ("sqlite://data/filament.db", "sqlite://data/filament.db"),
            ("not a url", "not a url"),
        ] {
            let secret = SecretUrl::new(url);
            assert_eq!(secret.expose(), url);
            assert_eq!(secret.to_string(), shown);
            assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
            assert!(!format!("{secret:?} {secret}").contains("s3cret"), "{url}");
        }
    }

    #[test]
    fn a_derived_debug_of_a_config_hides_the_password() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Config {
            database_url: SecretUrl,
        }
        let config = Config {
            database_url: "postgres://user:s3cretpw@127.0.0.1/db".into(),
        };
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("s3cretpw"), "{printed}");
        assert!(printed.contains("127.0.0.1/db"), "{printed}");
    }
}
