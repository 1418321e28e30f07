//! The deployment's shared secret. Every internal call (catalog apply and snapshot, replica
//! replication, prepare, leader notices, orders sent to the leader, cache invalidation) carries
//! it as `Authorization: Bearer <secret>`, and internal endpoints answer 401 without it,
//! having done nothing. Public endpoints stay open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;

use crate::api_key::{random_bytes, to_hex};
use crate::env;
use crate::envelope::ApiError;

/// Shortest secret accepted.
pub const MIN_LEN: usize = 16;

/// Where to find the secret: every service takes these flags (and their environment
/// variables).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecretArgs {
    /// File holding the deployment's shared secret, which every internal call carries
    /// (`stocknet up` creates one in its data directory).
    #[arg(long, env = env::SECRET_FILE)]
    pub secret_file: Option<PathBuf>,
    /// The shared secret itself. Prefer --secret-file: other users of the machine can read a
    /// process's arguments.
    #[arg(long, env = env::SECRET, hide_env_values = true)]
    pub secret: Option<String>,
}

impl SecretArgs {
    pub fn load(&self) -> Result<Secret, SecretError> {
        match (&self.secret_file, &self.secret) {
            (Some(path), _) => Secret::read(path),
            (None, Some(text)) => Secret::new(text),
            (None, None) => Err(SecretError::Missing),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no shared secret: give --secret-file (STOCKNET_SECRET_FILE) or STOCKNET_SECRET; \
         `stocknet up` makes one in its data directory"
    )]
    Missing,
    #[error("shared secret {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the shared secret must be at least {MIN_LEN} visible ASCII characters")]
    Weak,
}

/// The secret; never printed (its `Debug` is redacted).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// `text` without surrounding whitespace (a file's trailing newline).
    pub fn new(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.len() < MIN_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::Weak);
        }
        Ok(Self(Arc::from(text)))
    }

    pub fn read(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(&text)
    }

    /// 32 random bytes from the kernel, as 64 hex digits.
    pub fn generate() -> std::io::Result<Self> {
        let bytes: [u8; 32] = random_bytes()?;
        Ok(Self(Arc::from(to_hex(&bytes))))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header value, marked sensitive so that it is never logged.
    pub fn bearer(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .expect("a secret is visible ASCII, which a header value may hold");
        value.set_sensitive(true);
        value
    }

    /// Whether `headers` carry this secret; the comparison takes the same time wherever the
    /// first difference is.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|token| token.as_bytes().ct_eq(self.0.as_bytes()).into())
    }
}

/// The token of a `Bearer` credential: the scheme in any case, then one or more spaces
/// (RFC 9110, 11.4).
pub fn bearer_token(credential: &str) -> Option<&str> {
    let (scheme, token) = credential.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// `routes` for callers with `secret` only: any other call gets 401 and reaches nothing.
pub fn internal_only<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    secret: Secret,
) -> Router<S> {
    routes.route_layer(middleware::from_fn_with_state(secret, require_secret))
}

/// Middleware of internal routes: a call without the secret gets 401 and reaches nothing.
async fn require_secret(State(secret): State<Secret>, request: Request, next: Next) -> Response {
    if secret.admits(request.headers()) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Internal endpoint: it needs the deployment's shared secret",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_is_admitted() {
        let secret = Secret::new("correct-horse-battery\n").unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        // The scheme in any case, with one space or more (RFC 9110).
        for right in [
            "Bearer correct-horse-battery",
            "bearer correct-horse-battery",
            "BEARER  correct-horse-battery",
        ] {
            assert!(secret.admits(&with(right)), "{right}");
        }
        for wrong in [
            "Bearercorrect-horse-battery",
            "Bearer\tcorrect-horse-battery",
            "Bearer correct-horse-batterz",
            "Bearer correct-horse-battery-staple",
            "Bearer correct",
            "correct-horse-battery",
            "Basic correct-horse-battery",
        ] {
            assert!(!secret.admits(&with(wrong)), "{wrong}");
        }
        assert!(!secret.admits(&HeaderMap::new()));
        assert_eq!(format!("{secret:?}"), "Secret(redacted)");
        assert!(secret.bearer().is_sensitive());
    }

    #[test]
    fn weak_or_missing_secrets_are_refused() {
        assert!(matches!(Secret::new("short"), Err(SecretError::Weak)));
        assert!(matches!(
            Secret::new("sixteen chars with spaces"),
            Err(SecretError::Weak)
        ));
        assert!(matches!(
            SecretArgs::default().load(),
            Err(SecretError::Missing)
        ));
        let generated = Secret::generate().unwrap();
        assert_eq!(generated.expose().len(), 64);
        assert_ne!(generated.expose(), Secret::generate().unwrap().expose());
    }
}
