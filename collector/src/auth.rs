//! API authentication: bearer tokens with a `read` or `admin` scope, kept in the collector's
//! config as SHA-256 digests (never the tokens themselves), and the axum middleware that
//! enforces them on `/api/v1/*` and, when configured, on `/metrics` and `/healthz`.
//!
//! Tokens configured means tokens required: with no `[[api_tokens]]` the API's reads are
//! open, as they were before tokens existed (a lab, or a collector reachable only from
//! loopback), but admin calls are refused: they always need an admin token.

use crate::error::{ApiError, ErrorCode};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq as _;

/// Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "estate_api_";

/// Random bytes in a token: 256 bits, beyond any guessing.
const TOKEN_RANDOM_BYTES: usize = 32;

/// Longest accepted token name: names appear in log lines (who deleted a host).
const MAX_NAME_LENGTH: usize = 64;

/// What a token may do. `Admin` includes everything `Read` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every `GET` of the API (and `/metrics`, `/healthz` when they are protected).
    Read,
    /// Calls that change what the collector holds, e.g. `DELETE /api/v1/hosts/{id}`.
    Admin,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// One configured token: its name (for logs), scope and the SHA-256 of the token text.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub scope: Scope,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    /// The digest is not secret, but it is noise in a config dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Who may call what on the HTTP side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiAuth {
    /// Empty: the API is open. Otherwise every `/api/v1` call needs one of these.
    pub tokens: Vec<ApiToken>,
    /// `/metrics` needs a read token (`metrics_auth = true`).
    pub protect_metrics: bool,
    /// `/healthz` needs a read token (`healthz_auth = true`).
    pub protect_healthz: bool,
}

/// Why a request was refused; the label of `estate_api_requests_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`, or a token that matches no configured one.
    Invalid,
    /// A valid token whose scope is too small for the call.
    Forbidden,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [Rejection::Missing, Rejection::Invalid, Rejection::Forbidden];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Invalid => "invalid",
            Rejection::Forbidden => "forbidden",
        }
    }
}

/// Who made an API call, put in the request's extensions for handlers that log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// API authentication is off (no tokens configured), or the route is open.
    Anonymous,
    /// The name of the configured token presented.
    Token(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("anonymous (API authentication off)"),
            Caller::Token(name) => write!(f, "token `{name}`"),
        }
    }
}

/// The SHA-256 of a token's text, as configured in `sha256`.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token: the prefix and 256 bits from the operating system's random source, in hex.
pub fn generate_token() -> anyhow::Result<String> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|error| anyhow::anyhow!("cannot read the system's random source: {error}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Parses the 64 hex digits of a SHA-256 digest (either case).
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, at) in out.iter_mut().zip((0..64).step_by(2)) {
        *slot = u8::from_str_radix(&text[at..at + 2], 16).ok()?;
    }
    Some(out)
}

/// A token name: 1 to 64 of ASCII letters, digits, `-`, `_`, `.` (it is logged and printed
/// into a TOML string, so nothing that needs quoting).
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "token name `{name}` must be 1 to {MAX_NAME_LENGTH} ASCII letters, digits, `-`, `_` \
             or `.`"
        ))
    }
}

/// The config lines `api-token create` prints for a new token.
pub fn config_lines(name: &str, scope: Scope, token: &str) -> String {
    format!(
        "[[api_tokens]]\nname = \"{name}\"\nscope = \"{}\"\nsha256 = \"{}\"\n",
        scope.as_str(),
        hex(&digest(token))
    )
}

impl ApiAuth {
    /// Whether any route needs a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The scope a request needs, or `None` when it is open. Reads (`GET`, `HEAD`) under
    /// `/api/` need `read`; any other method there changes state and needs `admin` (so a
    /// future write route is protected before anyone thinks of it). The UI page itself holds
    /// no data and stays open, so a browser can load it and then ask for a token.
    ///
    /// Without tokens, reads are open but admin calls are still refused ([`ApiAuth::check`]):
    /// deleting hosts is never open to anyone who can reach the port.
    pub fn required_scope(&self, method: &Method, path: &str) -> Option<Scope> {
        if path == "/api" || path.starts_with("/api/") {
            if method != Method::GET && method != Method::HEAD {
                return Some(Scope::Admin);
            }
            return self.enabled().then_some(Scope::Read);
        }
        if !self.enabled() {
            return None;
        }
        match path {
            "/metrics" if self.protect_metrics => Some(Scope::Read),
            "/healthz" if self.protect_healthz => Some(Scope::Read),
            _ => None,
        }
    }

    /// Checks an `Authorization` header against the configured tokens for `needed`.
    ///
    /// The presented token is hashed, and the digest compared with every configured digest
    /// in constant time, without stopping at a match. Hashing first is what makes timing
    /// useless to an attacker: a comparison that stopped at the first differing byte would
    /// reveal only how many leading bytes of SHA-256(guess) match a stored digest, and
    /// knowing that does not help find a token whose digest matches further (that would take
    /// a preimage of SHA-256). The constant-time comparison removes even that signal.
    pub fn check(
        &self,
        authorization: Option<&HeaderValue>,
        needed: Scope,
    ) -> Result<Caller, (Rejection, String)> {
        if self.tokens.is_empty() {
            return Err((
                Rejection::Forbidden,
                format!(
                    "this call needs an API token with scope `{}` and the collector has none: \
                     make one with `estate-collector api-token create --scope admin` (README \
                     \"API tokens\")",
                    needed.as_str()
                ),
            ));
        }
        let Some(value) = authorization else {
            return Err((
                Rejection::Missing,
                "this call needs an API token: send `Authorization: Bearer <token>` (README \
                 \"API tokens\")"
                    .into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                (
                    Rejection::Invalid,
                    "the `Authorization` header must be `Bearer <token>`".to_owned(),
                )
            })?;
        let presented = digest(token);
        let mut matched: Option<&ApiToken> = None;
        for configured in &self.tokens {
            if bool::from(configured.sha256.ct_eq(&presented)) {
                matched = Some(configured);
            }
        }
        let Some(configured) = matched else {
            return Err((
                Rejection::Invalid,
                "the bearer token is not one of the collector's API tokens (revoked, or \
                 mistyped)"
                    .into(),
            ));
        };
        if configured.scope < needed {
            return Err((
                Rejection::Forbidden,
                format!(
                    "token `{}` has scope `{}`; this call needs `{}`",
                    configured.name,
                    configured.scope.as_str(),
                    needed.as_str()
                ),
            ));
        }
        Ok(Caller::Token(configured.name.clone()))
    }
}

/// What the middleware needs: the token list and the counter of refusals.
#[derive(Debug, Clone)]
pub struct AuthState {
    pub auth: Arc<ApiAuth>,
    pub metrics: Arc<crate::metrics::IngestMetrics>,
}

/// Axum middleware: lets a request through with its [`Caller`] in the extensions, or answers
/// 401 (with `WWW-Authenticate: Bearer`) or 403 with a JSON error. The token is never echoed
/// or logged.
pub async fn authorize(
    State(state): State<AuthState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(needed) = state
        .auth
        .required_scope(request.method(), request.uri().path())
    else {
        request.extensions_mut().insert(Caller::Anonymous);
        return next.run(request).await;
    };
    match state
        .auth
        .check(request.headers().get(header::AUTHORIZATION), needed)
    {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err((rejection, message)) => {
            state.metrics.observe_api_rejection(rejection);
            tracing::debug!(
                reason = rejection.label(),
                method = %request.method(),
                path = request.uri().path(),
                %message,
                "API request refused"
            );
            refusal(rejection, needed, message)
        }
    }
}

/// The response for a refused request: RFC 6750's challenge on 401, `insufficient_scope` on 403.
fn refusal(rejection: Rejection, needed: Scope, message: String) -> Response {
    let (code, challenge) = match rejection {
        Rejection::Missing => (
            ErrorCode::Unauthenticated,
            "Bearer realm=\"estate\"".to_owned(),
        ),
        Rejection::Invalid => (
            ErrorCode::Unauthenticated,
            "Bearer realm=\"estate\", error=\"invalid_token\"".to_owned(),
        ),
        Rejection::Forbidden => (
            ErrorCode::PermissionDenied,
            format!(
                "Bearer realm=\"estate\", error=\"insufficient_scope\", scope=\"{}\"",
                needed.as_str()
            ),
        ),
    };
    let mut response = ApiError::new(code, message).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ApiAuth {
        ApiAuth {
            tokens: vec![
                ApiToken {
                    name: "grafana".into(),
                    scope: Scope::Read,
                    sha256: digest("estate_api_read"),
                },
                ApiToken {
                    name: "ops".into(),
                    scope: Scope::Admin,
                    sha256: digest("estate_api_admin"),
                },
            ],
            protect_metrics: true,
            protect_healthz: false,
        }
    }

    fn check(header: Option<&str>, needed: Scope) -> Result<Caller, (Rejection, String)> {
        let value = header.map(|text| HeaderValue::from_str(text).unwrap());
        auth().check(value.as_ref(), needed)
    }

    #[test]
    fn a_configured_token_passes_with_its_scope_and_admin_covers_read() {
        let read = Caller::Token("grafana".into());
        let admin = Caller::Token("ops".into());
        assert_eq!(check(Some("Bearer estate_api_read"), Scope::Read), Ok(read));
        assert_eq!(
            check(Some("bearer  estate_api_admin "), Scope::Read),
            Ok(admin.clone())
        );
        assert_eq!(
            check(Some("Bearer estate_api_admin"), Scope::Admin),
            Ok(admin)
        );
        let (rejection, message) = check(Some("Bearer estate_api_read"), Scope::Admin).unwrap_err();
        assert_eq!(rejection, Rejection::Forbidden);
        assert_eq!(
            message,
            "token `grafana` has scope `read`; this call needs `admin`"
        );
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused_without_echoing_them() {
        assert_eq!(check(None, Scope::Read).unwrap_err().0, Rejection::Missing);
        for header in ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "estate_api_read"] {
            let (rejection, message) = check(Some(header), Scope::Read).unwrap_err();
            assert_eq!(rejection, Rejection::Invalid, "{header}");
            assert!(message.contains("must be `Bearer <token>`"), "{message}");
        }
        let (rejection, message) = check(Some("Bearer estate_api_guess"), Scope::Read).unwrap_err();
        assert_eq!(rejection, Rejection::Invalid);
        assert!(!message.contains("estate_api_guess"), "{message}");
        // A digest is not a token: presenting the configured hash itself does not pass.
        let hashed = format!("Bearer {}", hex(&digest("estate_api_read")));
        assert_eq!(
            check(Some(&hashed), Scope::Read).unwrap_err().0,
            Rejection::Invalid
        );
    }

    #[test]
    fn only_the_api_and_the_configured_endpoints_need_a_token() {
        let auth = auth();
        let scope = |method: Method, path: &str| auth.required_scope(&method, path);
        assert_eq!(scope(Method::GET, "/api/v1/hosts"), Some(Scope::Read));
        assert_eq!(scope(Method::HEAD, "/api/v1/fields"), Some(Scope::Read));
        assert_eq!(scope(Method::DELETE, "/api/v1/hosts/x"), Some(Scope::Admin));
        assert_eq!(scope(Method::POST, "/api/v1/anything"), Some(Scope::Admin));
        assert_eq!(scope(Method::GET, "/api/v2/unknown"), Some(Scope::Read));
        assert_eq!(scope(Method::GET, "/metrics"), Some(Scope::Read));
        assert_eq!(scope(Method::GET, "/healthz"), None);
        assert_eq!(scope(Method::GET, "/"), None);
        assert_eq!(scope(Method::GET, "/apix"), None);
    }

    #[test]
    fn without_tokens_reads_are_open_and_admin_calls_refused() {
        let open = ApiAuth::default();
        assert_eq!(open.required_scope(&Method::GET, "/api/v1/hosts"), None);
        assert_eq!(open.required_scope(&Method::GET, "/metrics"), None);
        assert_eq!(
            open.required_scope(&Method::DELETE, "/api/v1/hosts/x"),
            Some(Scope::Admin)
        );
        let header = HeaderValue::from_static("Bearer estate_api_anything");
        let (rejection, message) = open.check(Some(&header), Scope::Admin).unwrap_err();
        assert_eq!(rejection, Rejection::Forbidden);
        assert!(message.contains("the collector has none"), "{message}");
    }

    #[test]
    fn generated_tokens_are_prefixed_random_and_hash_to_the_printed_digest() {
        let first = generate_token().unwrap();
        let second = generate_token().unwrap();
        assert_ne!(first, second);
        assert!(first.starts_with(TOKEN_PREFIX));
        assert_eq!(first.len(), TOKEN_PREFIX.len() + 2 * TOKEN_RANDOM_BYTES);
        let lines = config_lines("grafana", Scope::Read, &first);
        let printed = lines
            .lines()
            .find_map(|line| line.strip_prefix("sha256 = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap();
        assert_eq!(parse_digest(printed), Some(digest(&first)));
    }

    #[test]
    fn digests_parse_from_64_hex_digits_only() {
        let known = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_digest(known), Some(digest("test")));
        assert_eq!(parse_digest(&known.to_uppercase()), Some(digest("test")));
        assert_eq!(parse_digest(&known[..62]), None);
        assert_eq!(parse_digest(&format!("{}zz", &known[..62])), None);
        assert_eq!(parse_digest(&format!("{}é", &known[..62])), None);
    }

    #[test]
    fn names_are_plain_and_bounded() {
        assert!(check_name("grafana-prod_2.x").is_ok());
        for bad in ["", "with space", "quote\"", &"x".repeat(65)] {
            assert!(check_name(bad).unwrap_err().contains(&format!("`{bad}`")));
        }
    }
}
