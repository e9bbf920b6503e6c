//! Certificate inspection shared by every kind that speaks TLS (`ldap`, `tls`, `http`, `smtp`):
//! a rustls client config whose verifier records the peer's chain and the verdict of the real
//! WebPKI verification, so that a probe reports the certificate's dates even when it is rejected.
//!
//! Two ways in:
//!
//! - [`handshake`]: runs the TLS handshake over a stream the caller opened (a fresh TCP
//!   connection, or one just upgraded with STARTTLS) and judges the whole [`TlsPolicy`]: chain
//!   and name (when `verify`), expiry against `cert_min_days` (always), minimum version. It
//!   returns the TLS stream and a [`CertificateReport`], or a [`TlsFailure`] that still carries
//!   the report when the server showed a certificate.
//! - [`CertificateInspector`]: the config and the recorder apart, for a library that runs the
//!   handshake itself (`ldap3`); read the report with [`CertificateInspector::take_report`].
//!
//! Reasons never name the target: the caller prefixes it (``"`{target}`: {reason}"``).
//!
//! Measurements ([`CertificateReport::measurements`]; names are a contract with the collector):
//! `cert_not_after_unix`, `cert_days_left` (whole days, negative once expired), `chain_length`
//! (certificates the server sent) and `tls_version` (text `TLSv1.3`, value 1.3) once the
//! handshake completed.

use super::measurement;
use estate_proto::v1::Measurement;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// At most this many subjectAltNames are kept from a certificate.
const MAX_NAMES: usize = 16;
/// A subject or issuer is cut to this many characters.
const MAX_TEXT_CHARS: usize = 200;

/// Certificates are verified unless told otherwise.
pub fn default_tls_verify() -> bool {
    true
}

/// Two weeks leaves time to renew a certificate after the alert.
pub fn default_cert_min_days() -> u32 {
    14
}

/// The lowest TLS version a probe accepts, as written in `min_version = "1.3"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2, the default minimum (nothing older is offered).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    /// `TLSv1.2` or `TLSv1.3`, the text of the `tls_version` measurement.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }

    /// `1.2` or `1.3`, as written in `min_version`.
    pub fn config_text(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }

    /// 1.2 or 1.3, the value of the `tls_version` measurement.
    pub fn number(self) -> f64 {
        match self {
            TlsVersion::Tls12 => 1.2,
            TlsVersion::Tls13 => 1.3,
        }
    }

    fn from_rustls(version: rustls::ProtocolVersion) -> Option<TlsVersion> {
        match version {
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

/// What a probe demands of a TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Enforce the chain (to the system roots or `ca_file`) and the name. `false` still
    /// records the verdict and still applies `cert_min_days`.
    pub verify: bool,
    /// PEM file of the CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Fail when the certificate expires in fewer days than this.
    pub cert_min_days: u32,
    /// The lowest protocol version offered.
    pub min_version: TlsVersion,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            verify: default_tls_verify(),
            ca_file: None,
            cert_min_days: default_cert_min_days(),
            min_version: TlsVersion::default(),
        }
    }
}

/// Why a TLS handshake did not give a usable connection, with what the server showed.
#[derive(Debug, Clone)]
pub struct TlsFailure {
    /// What went wrong, without the target (the caller prefixes it).
    pub reason: String,
    /// The certificate, when the server sent one before things went wrong.
    pub report: Option<CertificateReport>,
}

impl TlsFailure {
    /// The report's measurements, or none.
    pub fn measurements(&self) -> Vec<Measurement> {
        self.report
            .as_ref()
            .map(CertificateReport::measurements)
            .unwrap_or_default()
    }
}

/// Runs a TLS handshake over `stream` (already connected, or upgraded with STARTTLS) with SNI
/// `server_name` (a DNS name or an IP address, also the name the certificate must carry), and
/// judges it by `policy` within `timeout`. I/O happens here only: `ca_file` is read now.
///
/// `Ok` means the handshake completed and the certificate satisfies the policy; `Err` says why
/// not, with the certificate's report when there was one. Never panics.
pub async fn handshake<S>(
    stream: S,
    server_name: &str,
    policy: &TlsPolicy,
    timeout: Duration,
) -> Result<(TlsStream<S>, CertificateReport), TlsFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failure = |reason: String, report: Option<CertificateReport>| TlsFailure { reason, report };
    let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
        failure(
            format!("server name `{server_name}` is neither a DNS name nor an IP address"),
            None,
        )
    })?;
    let inspector = CertificateInspector::new(policy).map_err(|reason| failure(reason, None))?;
    let connector = tokio_rustls::TlsConnector::from(inspector.client_config());
    let connected = tokio::time::timeout(timeout, connector.connect(name, stream)).await;
    let mut report = inspector.take_report();
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            let reason = match &report {
                Some(seen) if policy.verify && seen.verdict.is_err() => {
                    seen.untrusted_reason(server_name)
                }
                _ => handshake_error(&error, policy.min_version),
            };
            return Err(failure(reason, report));
        }
        Err(_elapsed) => {
            // Whole milliseconds: the caller often passes what remains of a deadline.
            let within = Duration::from_millis(timeout.as_millis().try_into().unwrap_or(u64::MAX));
            let reason = format!(
                "no TLS handshake within {}",
                humantime::format_duration(within)
            );
            return Err(failure(reason, report));
        }
    };
    let Some(mut report) = report.take() else {
        // The verifier runs in every full handshake; a fresh config never resumes a session.
        return Err(failure(
            "the TLS handshake completed without a server certificate".to_owned(),
            None,
        ));
    };
    report.version = stream
        .get_ref()
        .1
        .protocol_version()
        .and_then(TlsVersion::from_rustls);
    if let Some(problem) = report.expiry_problem(policy.cert_min_days) {
        return Err(failure(problem, Some(report)));
    }
    Ok((stream, report))
}

/// A failed handshake in words; a version the server refuses is named as such.
fn handshake_error(error: &std::io::Error, min_version: TlsVersion) -> String {
    let text = error.to_string();
    let version_refused = text.contains("ProtocolVersion") || text.contains("incompatible");
    if version_refused && min_version > TlsVersion::Tls12 {
        format!(
            "TLS handshake failed: {text} (the server does not speak TLS {} or later, \
             `min_version` `{}`)",
            min_version.config_text(),
            min_version.config_text()
        )
    } else if error.kind() == std::io::ErrorKind::UnexpectedEof {
        "TLS handshake failed: the server closed the connection".to_owned()
    } else {
        format!("TLS handshake failed: {text}")
    }
}

/// A rustls client config and the recorder its verifier writes to, for one probe.
#[derive(Debug)]
pub struct CertificateInspector {
    config: Arc<rustls::ClientConfig>,
    recorder: Arc<PeerRecorder>,
}

impl CertificateInspector {
    /// Builds the config for `policy`: the roots of `ca_file` (read now) or the system's, the
    /// versions from `min_version`, a verifier that enforces its verdict only with `verify`.
    pub fn new(policy: &TlsPolicy) -> Result<CertificateInspector, String> {
        let roots = match &policy.ca_file {
            Some(path) => file_roots(path)?,
            None => system_roots(),
        };
        let provider = provider();
        // No roots at all (a bare container): every chain is then reported as untrusted.
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .ok();
        let recorder = Arc::new(PeerRecorder::default());
        let verifier = RecordingVerifier {
            webpki,
            enforce: policy.verify,
            provider: Arc::clone(&provider),
            recorder: Arc::clone(&recorder),
        };
        let versions: &[&'static rustls::SupportedProtocolVersion] = match policy.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|error| format!("cannot set up TLS: {error}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(CertificateInspector {
            config: Arc::new(config),
            recorder,
        })
    }

    /// The config to hand to the TLS client.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }

    /// What the first handshake since the last call saw, if any. The TLS version is unknown
    /// here (`None`); [`handshake`] fills it in.
    pub fn take_report(&self) -> Option<CertificateReport> {
        self.recorder.take()
    }
}

/// The ring provider, built once; passed explicitly so nothing depends on a process default.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The system's trusted roots, loaded once per process (and on first use only).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for problem in &loaded.errors {
            tracing::debug!(%problem, "a system CA certificate could not be loaded");
        }
        roots.add_parsable_certificates(loaded.certs);
        Arc::new(roots)
    }))
}

/// The roots from `ca_file`.
fn file_roots(path: &std::path::Path) -> Result<Arc<RootCertStore>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read ca_file `{}`: {error}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("ca_file `{}` is not valid PEM: {error}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "ca_file `{}` holds no CA certificate",
            path.display()
        ));
    }
    Ok(Arc::new(roots))
}

/// What the server's certificate says, as far as the probe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    pub not_after: i64,
    pub not_before: i64,
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
}

impl CertificateFacts {
    /// Reads a DER certificate; `None` when it does not parse.
    pub fn parse(der: &[u8]) -> Option<CertificateFacts> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let validity = cert.validity();
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .ok()
                            .map(|b| IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(|b| IpAddr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .take(MAX_NAMES)
                .collect(),
            _ => Vec::new(),
        };
        Some(CertificateFacts {
            not_after: validity.not_after.timestamp(),
            not_before: validity.not_before.timestamp(),
            subject: cut(&cert.subject().to_string()),
            issuer: cut(&cert.issuer().to_string()),
            names,
        })
    }

    /// Whole days until `not_after`, rounded down (so negative once expired).
    pub fn days_left(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        (self.not_after - now).div_euclid(86_400)
    }
}

/// What one handshake showed: the end-entity certificate, the chain's length, the verdict of
/// the real verification (recorded even when not enforced) and the negotiated version.
#[derive(Debug, Clone)]
pub struct CertificateReport {
    /// The end-entity certificate; `None` when it does not parse.
    pub certificate: Option<CertificateFacts>,
    /// Certificates the server sent, its own included.
    pub chain_length: usize,
    /// `Ok` when the chain leads to a trusted root and names the server.
    pub verdict: Result<(), rustls::Error>,
    /// The negotiated version, once the handshake completed.
    pub version: Option<TlsVersion>,
}

impl CertificateReport {
    /// `cert_not_after_unix` and `cert_days_left` (when the certificate parses), `chain_length`,
    /// and `tls_version` (when the handshake completed).
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut measurements = Vec::new();
        if let Some(cert) = &self.certificate {
            measurements.push(measurement("cert_not_after_unix", cert.not_after as f64));
            measurements.push(measurement("cert_days_left", cert.days_left() as f64));
        }
        measurements.push(measurement("chain_length", self.chain_length as f64));
        if let Some(version) = self.version {
            measurements.push(Measurement {
                name: "tls_version".to_owned(),
                value: version.number(),
                text: version.as_str().to_owned(),
            });
        }
        measurements
    }

    /// Why the certificate is not trusted for `server_name`, in words an administrator acts on
    /// (expired, not yet valid, wrong name, self-signed, unknown issuer).
    pub fn untrusted_reason(&self, server_name: &str) -> String {
        let Err(error) = &self.verdict else {
            return "the certificate was accepted".to_owned();
        };
        let facts = self.certificate.as_ref();
        let cert_error = match error {
            rustls::Error::InvalidCertificate(error) => error,
            other => return format!("certificate rejected: {other}"),
        };
        match cert_error {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => match facts {
                Some(facts) => format!("certificate expired on {}", format_unix(facts.not_after)),
                None => "certificate expired".to_owned(),
            },
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                match facts {
                    Some(facts) => format!(
                        "certificate is not valid before {}",
                        format_unix(facts.not_before)
                    ),
                    None => "certificate is not valid yet".to_owned(),
                }
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = facts
                    .map(|facts| {
                        facts
                            .names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|names| !names.is_empty())
                    .unwrap_or_else(|| "no subjectAltName".to_owned());
                format!("certificate is not valid for `{server_name}` (it names {names})")
            }
            CertificateError::UnknownIssuer => match facts {
                Some(facts) if facts.subject == facts.issuer => format!(
                    "certificate is self-signed (`{}`) and not trusted",
                    facts.subject
                ),
                Some(facts) => format!(
                    "certificate is issued by `{}`, which is not a trusted CA",
                    facts.issuer
                ),
                None => "certificate is issued by an untrusted CA".to_owned(),
            },
            other => format!("certificate rejected: {other:?}"),
        }
    }

    /// Says so when the certificate has expired or expires within `cert_min_days`.
    pub fn expiry_problem(&self, cert_min_days: u32) -> Option<String> {
        let cert = self.certificate.as_ref()?;
        let days = cert.days_left();
        if days >= i64::from(cert_min_days) {
            return None;
        }
        let when = format_unix(cert.not_after);
        Some(if days < 0 {
            format!("certificate expired on {when}")
        } else {
            format!(
                "certificate expires in {days} days (on {when}), less than `cert_min_days` \
                 {cert_min_days}"
            )
        })
    }
}

/// `` `2025-01-02T03:04:05Z` `` (backticks included), or the raw number before 1970.
pub fn format_unix(seconds: i64) -> String {
    match SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds.max(0) as u64)) {
        Some(time) if seconds >= 0 => format!("`{}`", humantime::format_rfc3339_seconds(time)),
        _ => format!("unix time `{seconds}`"),
    }
}

/// The first [`MAX_TEXT_CHARS`] characters, with `…` when cut.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Where the verifier leaves what it saw; the first handshake since the last `take` wins.
#[derive(Debug, Default)]
struct PeerRecorder(Mutex<Option<CertificateReport>>);

impl PeerRecorder {
    fn record(&self, seen: CertificateReport) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(seen);
        }
    }

    fn take(&self) -> Option<CertificateReport> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Runs the standard WebPKI verification, records the certificate and the verdict, and enforces
/// the verdict only when asked (`verify`). Handshake signatures are always checked.
#[derive(Debug)]
struct RecordingVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    enforce: bool,
    provider: Arc<CryptoProvider>,
    recorder: Arc<PeerRecorder>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.webpki {
            Some(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        self.recorder.record(CertificateReport {
            certificate: CertificateFacts::parse(end_entity.as_ref()),
            chain_length: 1 + intermediates.len(),
            verdict: verdict.clone(),
            version: None,
        });
        match verdict {
            Err(error) if self.enforce => Err(error),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A test CA and the server configs of certificates it (or nobody) signs, made by rcgen, for
/// the tests of every kind that speaks TLS.
#[cfg(test)]
pub(crate) mod test_pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// A test CA.
    #[derive(Debug)]
    pub struct TestPki {
        pub ca_pem: String,
        ca_der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    /// When a certificate is valid, relative to now.
    #[derive(Debug, Clone, Copy)]
    pub struct Validity {
        pub from_days: i64,
        pub until_days: i64,
    }

    pub const VALID: Validity = Validity {
        from_days: -1,
        until_days: 365,
    };

    impl TestPki {
        pub fn new() -> TestPki {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "estate test CA");
            let cert = params.self_signed(&key).unwrap();
            TestPki {
                ca_pem: cert.pem(),
                ca_der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A server config with a certificate for `names`, signed by this CA unless
        /// `self_signed`.
        pub fn server(
            &self,
            names: &[&str],
            validity: Validity,
            self_signed: bool,
        ) -> Arc<rustls::ServerConfig> {
            self.server_with_versions(
                names,
                validity,
                self_signed,
                &[&rustls::version::TLS13, &rustls::version::TLS12],
            )
        }

        /// As [`TestPki::server`], speaking only `versions`.
        pub fn server_with_versions(
            &self,
            names: &[&str],
            validity: Validity,
            self_signed: bool,
            versions: &[&'static rustls::SupportedProtocolVersion],
        ) -> Arc<rustls::ServerConfig> {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                    .unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let at = |days: i64| {
                rcgen::date_time_ymd(1970, 1, 1)
                    + Duration::from_secs((now + days * 86_400).max(0) as u64)
            };
            params.not_before = at(validity.from_days);
            params.not_after = at(validity.until_days);
            let (cert, chain) = if self_signed {
                let cert = params.self_signed(&key).unwrap();
                (cert.der().clone(), Vec::new())
            } else {
                let cert = params.signed_by(&key, &self.issuer).unwrap();
                (cert.der().clone(), vec![self.ca_der.clone()])
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut certs = vec![cert];
            certs.extend(chain);
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    certs,
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap();
            Arc::new(config)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::{TestPki, VALID, Validity};
    use super::*;
    use std::io::Write;
    use tokio::net::{TcpListener, TcpStream};

    /// Accepts one connection and runs the server side of the handshake.
    async fn serve_once(config: Arc<rustls::ServerConfig>) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = tokio_rustls::TlsAcceptor::from(config).accept(stream).await;
            }
        });
        (port, task)
    }

    async fn shake(
        config: Arc<rustls::ServerConfig>,
        policy: &TlsPolicy,
    ) -> Result<CertificateReport, TlsFailure> {
        let (port, task) = serve_once(config).await;
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let result = handshake(stream, "app.test", policy, Duration::from_secs(5)).await;
        task.abort();
        result.map(|(_, report)| report)
    }

    fn names(measurements: &[Measurement]) -> Vec<&str> {
        measurements.iter().map(|m| m.name.as_str()).collect()
    }

    #[tokio::test]
    async fn a_trusted_certificate_is_reported_and_a_rejected_one_still_measured() {
        let pki = TestPki::new();
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        ca.write_all(pki.ca_pem.as_bytes()).unwrap();
        let policy = TlsPolicy {
            ca_file: Some(ca.path().into()),
            ..TlsPolicy::default()
        };

        let report = shake(pki.server(&["app.test"], VALID, false), &policy)
            .await
            .unwrap();
        assert!(report.verdict.is_ok());
        assert_eq!(report.chain_length, 2);
        assert_eq!(report.version, Some(TlsVersion::Tls13));
        assert_eq!(
            names(&report.measurements()),
            [
                "cert_not_after_unix",
                "cert_days_left",
                "chain_length",
                "tls_version"
            ]
        );

        let failure = shake(pki.server(&["app.test"], VALID, true), &policy)
            .await
            .unwrap_err();
        assert_eq!(
            failure.reason,
            "certificate is self-signed (`CN=app.test`) and not trusted"
        );
        assert!(names(&failure.measurements()).contains(&"cert_days_left"));

        let soon = Validity {
            from_days: -30,
            until_days: 3,
        };
        let failure = shake(pki.server(&["app.test"], soon, false), &policy)
            .await
            .unwrap_err();
        assert!(
            failure.reason.starts_with("certificate expires in "),
            "{failure:?}"
        );
        assert!(
            failure.reason.ends_with("less than `cert_min_days` 14"),
            "{failure:?}"
        );

        let unverified = TlsPolicy {
            verify: false,
            ..TlsPolicy::default()
        };
        let report = shake(pki.server(&["other.test"], VALID, true), &unverified)
            .await
            .unwrap();
        assert!(report.verdict.is_err(), "the verdict is recorded anyway");
    }

    #[tokio::test]
    async fn an_unreadable_ca_file_and_a_bad_server_name_fail_before_the_handshake() {
        let policy = TlsPolicy {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsPolicy::default()
        };
        let stream = tokio::io::empty();
        let stream = tokio::io::join(stream, tokio::io::sink());
        let failure = handshake(stream, "app.test", &policy, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            failure
                .reason
                .starts_with("cannot read ca_file `/nonexistent/ca.pem`"),
            "{failure:?}"
        );
        let stream = tokio::io::join(tokio::io::empty(), tokio::io::sink());
        let failure = handshake(stream, "not a name", &TlsPolicy::default(), Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(
            failure.reason,
            "server name `not a name` is neither a DNS name nor an IP address"
        );
    }
}
