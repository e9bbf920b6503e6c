//! Agent tokens: the secrets by which an agent authenticates without a client certificate.
//!
//! Two kinds. An **enrollment** secret (`estate_enr_…`) is shared by many agents and good only
//! for `estate.v1.Enrollment/Enroll`: an
//! agent presents it once with its hostname and receives an **agent** token (`estate_agt_…`)
//! bound to that hostname, which then goes with every report as `authorization: Bearer …`.
//!
//! A token is a prefix and 256 random bits in hex. The store keeps only its SHA-256 (see
//! [`hash`]), an id to name it by (`token list`, `token revoke ID`), and its metadata; the
//! secret is shown once, when it is made.

use crate::store::{NewToken, Store, StoreError, TokenRecord};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// What a token is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Shared by agents, exchanged once for an agent token.
    Enrollment,
    /// One agent's credential, bound to its hostname.
    Agent,
}

impl TokenKind {
    /// The name stored in the database and shown by `token list`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Enrollment => "enrollment",
            TokenKind::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<TokenKind> {
        match text {
            "enrollment" => Some(TokenKind::Enrollment),
            "agent" => Some(TokenKind::Agent),
            _ => None,
        }
    }

    /// The secret's prefix: it tells humans and leaked-secret scanners what the string is.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Enrollment => ENROLLMENT_PREFIX,
            TokenKind::Agent => AGENT_PREFIX,
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const ENROLLMENT_PREFIX: &str = "estate_enr_";
pub const AGENT_PREFIX: &str = "estate_agt_";
/// 256 random bits, as 64 lowercase hex digits.
const SECRET_BYTES: usize = 32;
/// Token ids: 48 random bits in hex, enough to never collide in one estate's token table
/// (and the primary key would refuse a collision rather than mix two tokens up).
const ID_BYTES: usize = 6;

/// A freshly made token: the secret to hand out once, and what the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct NewSecret {
    pub id: String,
    pub kind: TokenKind,
    /// The full secret with its prefix. Never logged, never stored.
    pub secret: String,
    /// [`hash`] of `secret`: the only form the store keeps.
    pub hash: String,
}

/// The secret stays out of `{:?}`, so a stray debug log cannot leak it.
impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSecret")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Makes a new token of `kind` from the operating system's randomness (through `rand`'s
/// thread RNG, a ChaCha CSPRNG seeded and reseeded from the OS).
pub fn generate(kind: TokenKind) -> NewSecret {
    let mut rng = rand::rng();
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let mut id = [0u8; ID_BYTES];
    rng.fill_bytes(&mut id);
    let secret = format!("{}{}", kind.prefix(), to_hex(&secret));
    NewSecret {
        id: to_hex(&id),
        kind,
        hash: hash(&secret),
        secret,
    }
}

/// The stored form of a secret: `sha256:` and the hex SHA-256 of the whole string.
///
/// A plain, fast, unsalted hash is enough here, unlike for passwords: the secret carries 256
/// random bits, so there is no dictionary to try and a stolen table cannot be brute-forced;
/// salting or a slow KDF would only make each report's lookup by hash costlier. Looking up by
/// hash also means the secret is never compared byte by byte against stored secrets, so there
/// is no timing signal about how much of a guess was right.
pub fn hash(secret: &str) -> String {
    format!("sha256:{}", to_hex(&Sha256::digest(secret.as_bytes())))
}

/// Why a presented string is not a well-formed token. The messages never repeat the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error(
        "the token does not start with `{AGENT_PREFIX}` or `{ENROLLMENT_PREFIX}` (made by \
         `estate-collector token create`)"
    )]
    UnknownPrefix,
    #[error(
        "the `{prefix}` token has {length} characters after its prefix, not {expected} hex digits \
         (truncated or altered when copied?)",
        expected = SECRET_BYTES * 2
    )]
    BadBody { prefix: &'static str, length: usize },
}

/// Checks that `text` looks like a token and says which kind; surrounding whitespace (a
/// trailing newline in a file) is ignored. Says nothing about whether the store knows it.
pub fn parse(text: &str) -> Result<(TokenKind, &str), TokenFormatError> {
    let text = text.trim();
    let (kind, body) = if let Some(body) = text.strip_prefix(AGENT_PREFIX) {
        (TokenKind::Agent, body)
    } else if let Some(body) = text.strip_prefix(ENROLLMENT_PREFIX) {
        (TokenKind::Enrollment, body)
    } else {
        return Err(TokenFormatError::UnknownPrefix);
    };
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if body.len() != SECRET_BYTES * 2 || !body.bytes().all(hex) {
        return Err(TokenFormatError::BadBody {
            prefix: kind.prefix(),
            length: body.chars().count(),
        });
    }
    Ok((kind, text))
}

/// What `estate-collector token create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub kind: TokenKind,
    /// The hostname an agent token is bound to (required for, and only for, agent tokens).
    pub host: Option<String>,
    /// Valid for this long after creation; `None`: until revoked.
    pub ttl: Option<std::time::Duration>,
    /// Enrollments an enrollment secret allows; `None`: any number until it expires.
    pub uses: Option<u32>,
}

/// Checks a hostname a token is bound to: what an agent reports as `identity.hostname`.
pub fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 253 {
        return Err(format!("host `{host}` must be 1 to 253 characters"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "host `{}` must not contain spaces or control characters",
            host.escape_debug()
        ));
    }
    Ok(())
}

/// Makes and stores a token; returns it with its secret, to be shown once.
pub fn issue(
    store: &dyn Store,
    request: &IssueRequest,
    now_ms: i64,
) -> anyhow::Result<(NewSecret, NewToken)> {
    match (request.kind, &request.host) {
        (TokenKind::Agent, None) => {
            anyhow::bail!("an agent token is bound to a host: give `--host HOSTNAME`")
        }
        (TokenKind::Enrollment, Some(host)) => anyhow::bail!(
            "`--host {host}` is for agent tokens: an enrollment secret is shared, and each agent \
             gets a token for its own hostname when it enrolls"
        ),
        (TokenKind::Agent, Some(host)) => check_hostname(host).map_err(anyhow::Error::msg)?,
        (TokenKind::Enrollment, None) => {}
    }
    if request.uses.is_some() && request.kind == TokenKind::Agent {
        anyhow::bail!("`--uses` limits enrollments: it goes with `--enrollment`");
    }
    if request.uses == Some(0) {
        anyhow::bail!("`--uses 0` would make a secret nobody can use: give at least 1");
    }
    let expires_ms = match request.ttl {
        None => None,
        Some(ttl) if ttl.is_zero() => anyhow::bail!("`--ttl` must be longer than 0s"),
        Some(ttl) => {
            Some(now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
        }
    };
    let secret = generate(request.kind);
    let token = NewToken {
        id: secret.id.clone(),
        kind: request.kind,
        hash: secret.hash.clone(),
        host: request.host.clone(),
        created_ms: now_ms,
        expires_ms,
        uses_left: request.uses,
    };
    store.create_token(&token)?;
    Ok((secret, token))
}

/// Revokes the token `id`; an unknown id is an error naming it.
pub fn revoke(store: &dyn Store, id: &str, now_ms: i64) -> anyhow::Result<()> {
    if store.revoke_token(id, now_ms)? {
        Ok(())
    } else {
        anyhow::bail!("no token has id `{id}` (`estate-collector token list` shows them)")
    }
}

/// The `token list` table: never a secret (the store has none), one line per token.
pub fn render_list(tokens: &[TokenRecord], now_ms: i64) -> String {
    let time = |ms: Option<i64>| match ms {
        None => "-".to_owned(),
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
        )
        .to_string(),
    };
    let mut rows = vec![[
        "ID".to_owned(),
        "KIND".to_owned(),
        "HOST".to_owned(),
        "CREATED".to_owned(),
        "EXPIRES".to_owned(),
        "REVOKED".to_owned(),
        "LAST USED".to_owned(),
        "USES LEFT".to_owned(),
        "STATE".to_owned(),
    ]];
    for token in tokens {
        let state = match token.unusable_at(now_ms) {
            None => "valid",
            Some(crate::store::TokenRefusal::Revoked { .. }) => "revoked",
            Some(crate::store::TokenRefusal::Expired { .. }) => "expired",
            Some(crate::store::TokenRefusal::UsedUp) => "used up",
            Some(crate::store::TokenRefusal::Unknown) => "unknown",
        };
        rows.push([
            token.id.clone(),
            token.kind.to_string(),
            token.host.clone().unwrap_or_else(|| "-".to_owned()),
            time(Some(token.created_ms)),
            time(token.expires_ms),
            time(token.revoked_ms),
            time(token.last_used_ms),
            match (token.kind, token.uses_left) {
                (TokenKind::Agent, _) => "-".to_owned(),
                (TokenKind::Enrollment, None) => "unlimited".to_owned(),
                (TokenKind::Enrollment, Some(uses)) => uses.to_string(),
            },
            state.to_owned(),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Opens the token store for the CLI: `database` as the collector would open it.
pub fn open_store(database: &std::path::Path) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(
        match database
            .to_str()
            .filter(|text| crate::store::postgres::is_postgres_url(text))
        {
            Some(url) => std::sync::Arc::new(crate::store::postgres::PostgresStore::open(
                url,
                "estate-collector-token",
            )?),
            None => std::sync::Arc::new(crate::store::sqlite::SqliteStore::open(database)?),
        },
    )
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_carry_their_kind_and_parse_back() {
        for kind in [TokenKind::Agent, TokenKind::Enrollment] {
            let token = generate(kind);
            assert!(token.secret.starts_with(kind.prefix()), "{}", token.secret);
            assert_eq!(token.secret.len(), kind.prefix().len() + 64);
            assert_eq!(token.id.len(), 12);
            assert_eq!(parse(&token.secret), Ok((kind, token.secret.as_str())));
            assert_eq!(token.hash, hash(&token.secret));
            assert_eq!(TokenKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn two_tokens_differ() {
        let (a, b) = (generate(TokenKind::Agent), generate(TokenKind::Agent));
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn the_hash_is_sha256_of_the_whole_secret() {
        // `echo -n abc | sha256sum`
        assert_eq!(
            hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let token = generate(TokenKind::Agent);
        assert!(!token.hash.contains(&token.secret[AGENT_PREFIX.len()..]));
    }

    #[test]
    fn malformed_tokens_are_named_without_repeating_them() {
        let good = format!("{AGENT_PREFIX}{}", "ab".repeat(32));
        assert_eq!(
            parse(&format!("  {good}\n")),
            Ok((TokenKind::Agent, good.as_str()))
        );
        assert_eq!(parse("Bearer xyz"), Err(TokenFormatError::UnknownPrefix));
        let short = &good[..good.len() - 1];
        let error = parse(short).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the `estate_agt_` token has 63 characters after its prefix, not 64 hex digits \
             (truncated or altered when copied?)"
        );
        let upper = format!("{ENROLLMENT_PREFIX}{}", "AB".repeat(32));
        assert!(matches!(
            parse(&upper),
            Err(TokenFormatError::BadBody {
                prefix: ENROLLMENT_PREFIX,
                length: 64
            })
        ));
    }

    fn sqlite() -> (crate::store::sqlite::SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap();
        (store, dir)
    }

    fn request(kind: TokenKind, host: Option<&str>, uses: Option<u32>) -> IssueRequest {
        IssueRequest {
            kind,
            host: host.map(str::to_owned),
            ttl: Some(std::time::Duration::from_secs(3600)),
            uses,
        }
    }

    #[test]
    fn issue_checks_what_goes_with_which_kind() {
        let (store, _dir) = sqlite();
        let error = |r: IssueRequest| issue(&store, &r, 0).unwrap_err().to_string();
        assert_eq!(
            error(request(TokenKind::Agent, None, None)),
            "an agent token is bound to a host: give `--host HOSTNAME`"
        );
        assert!(
            error(request(TokenKind::Enrollment, Some("web"), None))
                .starts_with("`--host web` is for agent tokens")
        );
        assert!(
            error(request(TokenKind::Agent, Some("web"), Some(2)))
                .contains("goes with `--enrollment`")
        );
        assert!(error(request(TokenKind::Enrollment, None, Some(0))).contains("`--uses 0`"));
        assert_eq!(
            error(request(TokenKind::Agent, Some("web 01"), None)),
            "host `web 01` must not contain spaces or control characters"
        );
        assert!(store.list_tokens().unwrap().is_empty());
    }

    #[test]
    fn issued_tokens_are_listed_without_their_secret_and_revoked_by_id() {
        let (store, _dir) = sqlite();
        let (agent, _) = issue(
            &store,
            &request(TokenKind::Agent, Some("web-01"), None),
            1_000,
        )
        .unwrap();
        let (enrollment, stored) = issue(
            &store,
            &request(TokenKind::Enrollment, None, Some(5)),
            2_000,
        )
        .unwrap();
        assert_eq!(stored.expires_ms, Some(2_000 + 3_600_000));
        revoke(&store, &agent.id, 3_000).unwrap();
        assert_eq!(
            revoke(&store, "nope", 3_000).unwrap_err().to_string(),
            "no token has id `nope` (`estate-collector token list` shows them)"
        );
        let table = render_list(&store.list_tokens().unwrap(), 4_000);
        assert!(!table.contains(&agent.secret) && !table.contains(&enrollment.secret));
        assert!(!table.contains("sha256:"), "{table}");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("ID "), "{table}");
        assert!(lines[1].starts_with(&agent.id), "{table}");
        assert!(
            lines[1].contains("agent") && lines[1].contains("web-01"),
            "{table}"
        );
        assert!(
            lines[1].contains("1970-01-01T00:00:03Z") && lines[1].ends_with("revoked"),
            "{table}"
        );
        assert!(
            lines[2].contains("enrollment")
                && lines[2].split_whitespace().rev().take(2).eq(["valid", "5"]),
            "{table}"
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let token = generate(TokenKind::Enrollment);
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.secret), "{shown}");
        assert!(shown.contains(&token.id));
    }
}
