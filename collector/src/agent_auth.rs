//! How agents authenticate: the `agent_auth` setting, the agent-token check of each report
//! (`authorization: Bearer estate_agt_…`), and the enrollment service that exchanges a shared
//! enrollment secret for an agent token. The client-certificate check is in [`crate::ingest`].

use crate::clock::now_ms;
use crate::metrics::{EnrollResult, IngestMetrics, ReportResult};
use crate::store::{ExchangeOutcome, NewToken, Store, TokenRecord, TokenRefusal};
use crate::tokens::{self, TokenKind};
use estate_proto::v1::enrollment_server::Enrollment;
use estate_proto::v1::{EnrollRequest, EnrollResponse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Which credential a report must carry (config `agent_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAuth {
    /// Any agent may report as any host (no `client_ca_file`, the default then).
    None,
    /// A client certificate naming the report's host (the default with `client_ca_file`).
    Certificate,
    /// An agent token bound to the report's host.
    Token,
    /// A client certificate when the agent presents one, else an agent token.
    Either,
}

impl AgentAuth {
    pub fn parse(text: &str) -> Result<AgentAuth, String> {
        match text {
            "none" => Ok(AgentAuth::None),
            "certificate" => Ok(AgentAuth::Certificate),
            "token" => Ok(AgentAuth::Token),
            "either" => Ok(AgentAuth::Either),
            other => Err(format!(
                "`agent_auth` `{other}` is not one of `none`, `certificate`, `token`, `either`"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentAuth::None => "none",
            AgentAuth::Certificate => "certificate",
            AgentAuth::Token => "token",
            AgentAuth::Either => "either",
        }
    }

    /// Whether agent tokens are accepted (and the enrollment service answers).
    pub fn accepts_tokens(self) -> bool {
        matches!(self, AgentAuth::Token | AgentAuth::Either)
    }

    pub fn accepts_certificates(self) -> bool {
        matches!(self, AgentAuth::Certificate | AgentAuth::Either)
    }
}

/// How long a token looked up in the store is trusted before it is looked up again: the most
/// a revocation (`estate-collector token revoke`, on any collector of the database) takes to
/// be enforced. Short, since a lookup is one indexed read; long enough that an agent's report
/// burst after an outage costs one.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// A token's `last_used` is written at most this often (a write per report would be waste).
const TOUCH_INTERVAL_MS: i64 = 60_000;
/// Cached lookups, unknown tokens included; the whole cache is dropped when full, so a flood
/// of made-up tokens costs memory no more than this.
const MAX_CACHED_TOKENS: usize = 10_000;

/// What an agent is told when its report carries no agent token.
pub const AGENT_TOKEN_HOW_TO: &str = "this collector authenticates agents by token: send \
     `authorization: Bearer <agent token>`; create an enrollment secret with `estate-collector \
     token create --enrollment` and set the agent's `collector.enrollment_secret_file` (README \
     \"Agent authentication by token (enrollment)\")";

#[derive(Debug, Clone)]
struct CachedLookup {
    record: Option<TokenRecord>,
    fetched: Instant,
    /// The last `last_used_ms` written (or read) for this token.
    touched_ms: Option<i64>,
}

/// Checks agent tokens against the store, with a short cache.
pub struct TokenAuthenticator {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, CachedLookup>>,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator").finish_non_exhaustive()
    }
}

type Refusal = (ReportResult, Status);

fn unauthenticated(message: String) -> Refusal {
    (
        ReportResult::Unauthenticated,
        Status::unauthenticated(message),
    )
}

/// An instant for messages, e.g. `2026-11-24T05:33:23Z`.
fn shown_time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// The reason a refused token is refused, for the agent (never the secret).
pub fn refusal_message(what: &str, id: Option<&str>, refusal: TokenRefusal) -> String {
    let named = match id {
        Some(id) => format!("{what} `{id}`"),
        None => what.to_owned(),
    };
    match refusal {
        TokenRefusal::Unknown => format!(
            "{named} is unknown to this collector's database (never made there, or mistyped)"
        ),
        TokenRefusal::Revoked { at_ms } => format!(
            "{named} was revoked at {}: an administrator must issue a new one",
            shown_time(at_ms)
        ),
        TokenRefusal::Expired { at_ms } => {
            format!("{named} expired at {}", shown_time(at_ms))
        }
        TokenRefusal::UsedUp => format!("{named} has no enrollments left (`--uses`)"),
    }
}

/// The bearer token in `authorization`, checked for form only.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Refusal> {
    let Some(value) = metadata.get("authorization") else {
        return Err(unauthenticated(AGENT_TOKEN_HOW_TO.to_owned()));
    };
    let text = value.to_str().map_err(|_| {
        unauthenticated("the `authorization` metadata is not printable text".to_owned())
    })?;
    let token = match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token,
        _ => {
            return Err(unauthenticated(
                "the `authorization` metadata must be `Bearer <agent token>`".to_owned(),
            ));
        }
    };
    let (kind, token) = tokens::parse(token)
        .map_err(|error| unauthenticated(format!("the agent token is malformed: {error}")))?;
    if kind == TokenKind::Enrollment {
        return Err(unauthenticated(
            "the enrollment secret was sent as an agent token: put it in \
             `collector.enrollment_secret_file`, and the agent exchanges it for a token of its own"
                .to_owned(),
        ));
    }
    Ok(token)
}

impl TokenAuthenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        TokenAuthenticator {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the report's agent token: present, known, not revoked or expired, and bound to
    /// `hostname` (ASCII case ignored, as for certificates). Returns the token's id.
    pub async fn authorize(
        &self,
        metadata: &MetadataMap,
        hostname: &str,
    ) -> Result<String, Refusal> {
        let token = bearer_token(metadata)?;
        let hash = tokens::hash(token);
        let now = now_ms();
        let record = self.lookup(&hash).await?;
        let Some(record) = record else {
            return Err(unauthenticated(refusal_message(
                "the agent token",
                None,
                TokenRefusal::Unknown,
            )));
        };
        if record.kind != TokenKind::Agent {
            return Err(unauthenticated(
                "the token is not an agent token".to_owned(),
            ));
        }
        if let Some(refusal) = record.unusable_at(now) {
            return Err(unauthenticated(refusal_message(
                "the agent token",
                Some(&record.id),
                refusal,
            )));
        }
        let bound = record.host.as_deref().unwrap_or_default();
        if !bound.eq_ignore_ascii_case(hostname) {
            return Err((
                ReportResult::PermissionDenied,
                Status::permission_denied(format!(
                    "the agent token `{}` is for host `{bound}` but the report is from host \
                     `{hostname}`: an agent may report only as its own host",
                    record.id
                )),
            ));
        }
        self.touch(&hash, &record, now);
        Ok(record.id)
    }

    /// The token with this hash, from the cache when looked up less than
    /// [`TOKEN_CACHE_TTL`] ago.
    async fn lookup(&self, hash: &str) -> Result<Option<TokenRecord>, Refusal> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = cache.get(hash)
                && cached.fetched.elapsed() < TOKEN_CACHE_TTL
            {
                return Ok(cached.record.clone());
            }
        }
        let store = Arc::clone(&self.store);
        let key = hash.to_owned();
        let record = tokio::task::spawn_blocking(move || store.token_by_hash(&key))
            .await
            .map_err(|error| error.to_string())
            .and_then(|result| result.map_err(|error| error.to_string()))
            .map_err(|error| {
                tracing::error!(%error, "agent token lookup failed");
                (
                    ReportResult::Error,
                    Status::unavailable("the collector cannot check agent tokens now; retry"),
                )
            })?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.clear();
        }
        let touched_ms = cache
            .get(hash)
            .and_then(|cached| cached.touched_ms)
            .max(record.as_ref().and_then(|record| record.last_used_ms));
        cache.insert(
            hash.to_owned(),
            CachedLookup {
                record: record.clone(),
                fetched: Instant::now(),
                touched_ms,
            },
        );
        Ok(record)
    }

    /// Records the token's use in the store, at most once per [`TOUCH_INTERVAL_MS`], in the
    /// background: a failed write costs only the `last used` column's precision.
    fn touch(&self, hash: &str, record: &TokenRecord, now: i64) {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let Some(cached) = cache.get_mut(hash) else {
                return;
            };
            if cached
                .touched_ms
                .is_some_and(|touched| now - touched < TOUCH_INTERVAL_MS)
            {
                return;
            }
            cached.touched_ms = Some(now);
        }
        let store = Arc::clone(&self.store);
        let id = record.id.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.touch_token(&id, now) {
                tracing::warn!(%error, token_id = %id, "could not record the agent token's use");
            }
        });
    }
}

/// The gRPC `Enrollment` service: an enrollment secret and a hostname in, an agent token out.
pub struct EnrollmentService {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<IngestMetrics>,
    pub agent_auth: AgentAuth,
}

impl std::fmt::Debug for EnrollmentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentService")
            .field("agent_auth", &self.agent_auth)
            .finish_non_exhaustive()
    }
}

impl EnrollmentService {
    async fn exchange(
        &self,
        request: EnrollRequest,
    ) -> Result<EnrollResponse, (EnrollResult, Status)> {
        if !self.agent_auth.accepts_tokens() {
            return Err((
                EnrollResult::Disabled,
                Status::failed_precondition(format!(
                    "this collector does not authenticate agents by token (`agent_auth = \"{}\"`): \
                     remove `collector.enrollment_secret_file`, or set `agent_auth = \"token\"` \
                     or `\"either\"` on the collector",
                    self.agent_auth.as_str()
                )),
            ));
        }
        let invalid = |message: String| (EnrollResult::Invalid, Status::invalid_argument(message));
        let (kind, secret) = tokens::parse(&request.enrollment_secret)
            .map_err(|error| invalid(format!("the enrollment secret is malformed: {error}")))?;
        if kind != TokenKind::Enrollment {
            return Err(invalid(
                "an agent token was sent as the enrollment secret: it goes in \
                 `<state_dir>/agent-token`, not in `collector.enrollment_secret_file`"
                    .to_owned(),
            ));
        }
        tokens::check_hostname(&request.hostname).map_err(invalid)?;
        if request.agent_id.len() > 128 {
            return Err(invalid("`agent_id` is longer than 128 bytes".to_owned()));
        }
        let enrollment_hash = tokens::hash(secret);
        let agent = tokens::generate(TokenKind::Agent);
        let token = NewToken {
            id: agent.id.clone(),
            kind: TokenKind::Agent,
            hash: agent.hash.clone(),
            host: Some(request.hostname.clone()),
            created_ms: now_ms(),
            expires_ms: None,
            uses_left: None,
        };
        let store = Arc::clone(&self.store);
        let outcome = tokio::task::spawn_blocking(move || {
            store.exchange_enrollment(&enrollment_hash, &token)
        })
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| result.map_err(|error| error.to_string()))
        .map_err(|error| {
            tracing::error!(%error, "enrollment failed");
            (
                EnrollResult::Error,
                Status::unavailable("the collector cannot enroll agents now; retry"),
            )
        })?;
        match outcome {
            ExchangeOutcome::Issued { enrollment_id } => {
                tracing::info!(
                    hostname = %request.hostname,
                    agent_id = %request.agent_id,
                    token_id = %agent.id,
                    enrollment_id = %enrollment_id,
                    "agent enrolled"
                );
                Ok(EnrollResponse {
                    agent_token: agent.secret,
                    token_id: agent.id,
                })
            }
            ExchangeOutcome::Refused(refusal) => Err((
                EnrollResult::Refused,
                Status::unauthenticated(refusal_message("the enrollment secret", None, refusal)),
            )),
        }
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let remote = request
            .extensions()
            .get::<crate::tls::PeerInfo>()
            .and_then(|peer| peer.remote_addr);
        let request = request.into_inner();
        match self.exchange(request).await {
            Ok(response) => {
                self.metrics.observe_enrollment(EnrollResult::Issued);
                Ok(Response::new(response))
            }
            Err((result, status)) => {
                tracing::warn!(?remote, error = %status.message(), "enrollment refused");
                self.metrics.observe_enrollment(result);
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(value) = value {
            map.insert("authorization", value.parse().unwrap());
        }
        map
    }

    fn refused(value: Option<&str>) -> String {
        let (result, status) = bearer_token(&metadata(value)).unwrap_err();
        assert_eq!(result, ReportResult::Unauthenticated);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        status.message().to_owned()
    }

    #[test]
    fn the_bearer_must_be_an_agent_token() {
        let agent = tokens::generate(TokenKind::Agent).secret;
        assert_eq!(
            bearer_token(&metadata(Some(&format!("Bearer {agent}")))).unwrap(),
            agent
        );
        assert_eq!(
            bearer_token(&metadata(Some(&format!("bearer {agent}")))).unwrap(),
            agent
        );
        assert_eq!(refused(None), AGENT_TOKEN_HOW_TO);
        assert_eq!(
            refused(Some(&agent)),
            "the `authorization` metadata must be `Bearer <agent token>`"
        );
        assert!(refused(Some("Bearer estate_agt_123")).starts_with("the agent token is malformed"));
        let enrollment = tokens::generate(TokenKind::Enrollment).secret;
        let message = refused(Some(&format!("Bearer {enrollment}")));
        assert!(
            message.starts_with("the enrollment secret was sent as an agent token"),
            "{message}"
        );
        assert!(!message.contains(&enrollment));
    }

    #[test]
    fn refusals_say_why_and_when() {
        assert_eq!(
            refusal_message(
                "the agent token",
                Some("abc"),
                TokenRefusal::Revoked { at_ms: 0 }
            ),
            "the agent token `abc` was revoked at 1970-01-01T00:00:00Z: an administrator must \
             issue a new one"
        );
        assert_eq!(
            refusal_message("the enrollment secret", None, TokenRefusal::UsedUp),
            "the enrollment secret has no enrollments left (`--uses`)"
        );
        assert_eq!(AgentAuth::parse("either"), Ok(AgentAuth::Either));
        assert!(AgentAuth::Either.accepts_tokens() && AgentAuth::Either.accepts_certificates());
        assert!(!AgentAuth::Certificate.accepts_tokens());
    }

    #[tokio::test]
    async fn a_token_is_checked_against_the_store_and_its_host() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let request = tokens::IssueRequest {
            kind: TokenKind::Agent,
            host: Some("Web-01".into()),
            ttl: None,
            uses: None,
        };
        let (secret, _) = tokens::issue(store.as_ref(), &request, now_ms()).unwrap();
        let authenticator = TokenAuthenticator::new(Arc::clone(&store));
        let bearer = metadata(Some(&format!("Bearer {}", secret.secret)));
        assert_eq!(
            authenticator.authorize(&bearer, "web-01").await.unwrap(),
            secret.id
        );
        let (result, status) = authenticator.authorize(&bearer, "db-01").await.unwrap_err();
        assert_eq!(result, ReportResult::PermissionDenied);
        assert_eq!(
            status.message(),
            format!(
                "the agent token `{}` is for host `Web-01` but the report is from host \
                 `db-01`: an agent may report only as its own host",
                secret.id
            )
        );
        let unknown = tokens::generate(TokenKind::Agent).secret;
        let (result, status) = authenticator
            .authorize(&metadata(Some(&format!("Bearer {unknown}"))), "web-01")
            .await
            .unwrap_err();
        assert_eq!(result, ReportResult::Unauthenticated);
        assert!(
            status.message().contains("is unknown"),
            "{}",
            status.message()
        );
    }
}
