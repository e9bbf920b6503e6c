//! `estate-collector tls init`: a small private CA for an estate, the collector's server
//! certificate and, for mTLS, one client certificate per agent host. Made with rcgen (ECDSA
//! P-256); keys are written readable by their owner only.
//!
//! An existing `ca.pem`/`ca.key` in the directory is reused, so client certificates for new
//! hosts can be added later with the same CA. Existing certificates are never overwritten.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The CA certificate agents trust (`collector.ca_file`) and the collector checks client
/// certificates against (`client_ca_file`).
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: keep it off the collector if you can.
pub const CA_KEY: &str = "ca.key";
/// The collector's certificate (`tls_cert_file`).
pub const SERVER_CERT: &str = "server.pem";
/// The collector's private key (`tls_key_file`).
pub const SERVER_KEY: &str = "server.key";

/// The files of a client certificate for `host`: `client-HOST.pem` and `client-HOST.key`.
pub fn client_files(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{host}.pem")),
        dir.join(format!("client-{host}.key")),
    )
}

/// What `tls init` makes.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub dir: PathBuf,
    /// Names (DNS names or IP addresses) agents use to reach the collector; empty = no server
    /// certificate (only client certificates from an existing CA).
    pub hosts: Vec<String>,
    /// Agent host names to issue client certificates for.
    pub clients: Vec<String>,
    /// Validity of the server and client certificates.
    pub valid_for: Duration,
}

/// The CA's own validity: long, since replacing it means redistributing `ca.pem`.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Makes the CA (unless the directory has one) and the requested certificates. Returns the
/// files written, in order.
pub fn init(request: &InitRequest) -> anyhow::Result<Vec<PathBuf>> {
    if request.hosts.is_empty() && request.clients.is_empty() {
        anyhow::bail!("nothing to make: give at least one `--host` or `--client`");
    }
    for name in request.hosts.iter().chain(&request.clients) {
        validate_name(name)?;
    }
    std::fs::create_dir_all(&request.dir)
        .with_context(|| format!("failed to create directory `{}`", request.dir.display()))?;
    let mut written = Vec::new();

    let (ca_cert_path, ca_key_path) = (request.dir.join(CA_CERT), request.dir.join(CA_KEY));
    let issuer = if ca_cert_path.exists() || ca_key_path.exists() {
        load_ca(&ca_cert_path, &ca_key_path)?
    } else {
        let key = KeyPair::generate().context("failed to generate the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // A name of its own, so that certificates of two estates' CAs never look related.
        let made = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        params
            .distinguished_name
            .push(DnType::CommonName, format!("estate CA {made}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).context("failed to sign the CA")?;
        write_new(&ca_key_path, &key.serialize_pem(), true)?;
        write_new(&ca_cert_path, &cert.pem(), false)?;
        written.extend([ca_cert_path, ca_key_path]);
        Issuer::new(params, key)
    };

    if !request.hosts.is_empty() {
        let (cert, key) = issue(
            &issuer,
            &request.hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
            request.valid_for,
        )?;
        let (cert_path, key_path) = (request.dir.join(SERVER_CERT), request.dir.join(SERVER_KEY));
        refuse_existing(&[&cert_path, &key_path])?;
        write_new(&key_path, &key, true)?;
        write_new(&cert_path, &cert, false)?;
        written.extend([cert_path, key_path]);
    }
    for client in &request.clients {
        let (cert, key) = issue(
            &issuer,
            std::slice::from_ref(client),
            ExtendedKeyUsagePurpose::ClientAuth,
            request.valid_for,
        )?;
        let (cert_path, key_path) = client_files(&request.dir, client);
        refuse_existing(&[&cert_path, &key_path])?;
        write_new(&key_path, &key, true)?;
        write_new(&cert_path, &cert, false)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

/// Certificate names end up in file names and SANs: host names or IP addresses only.
fn validate_name(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        && !name.starts_with(['.', '-']);
    if !plain {
        anyhow::bail!(
            "`{name}` is not a host name or IP address (letters, digits, `-`, `.`, `:` only)"
        );
    }
    Ok(())
}

fn load_ca(cert_path: &Path, key_path: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let key_text = std::fs::read_to_string(key_path).with_context(|| {
        format!(
            "`{}` exists but its key `{}` cannot be read",
            cert_path.display(),
            key_path.display()
        )
    })?;
    let cert_text = std::fs::read_to_string(cert_path).with_context(|| {
        format!(
            "`{}` exists but the CA certificate `{}` cannot be read",
            key_path.display(),
            cert_path.display()
        )
    })?;
    let key = KeyPair::from_pem(&key_text)
        .with_context(|| format!("CA key `{}` is not a PEM private key", key_path.display()))?;
    Issuer::from_ca_cert_pem(&cert_text, key).with_context(|| {
        format!(
            "CA certificate `{}` is not a PEM certificate",
            cert_path.display()
        )
    })
}

/// A leaf certificate for `names` (the first is also the subject CN), as PEM (cert, key).
fn issue(
    issuer: &Issuer<'static, KeyPair>,
    names: &[String],
    usage: ExtendedKeyUsagePurpose,
    valid_for: Duration,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("failed to generate a key")?;
    let mut params = CertificateParams::new(names.to_vec())
        .with_context(|| format!("cannot make a certificate for {names:?}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, valid_for);
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("failed to sign the certificate for {names:?}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Valid from an hour ago (clock skew between machines) for `valid_for`.
fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + valid_for).into();
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            anyhow::bail!(
                "`{}` already exists; remove it first to make a new one",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a file that must not exist yet; `secret` files are readable by their owner only.
fn write_new(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create `{}`", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{TlsFiles, load_certificates, server_config};
    use rustls::client::danger::ServerCertVerifier as _;
    use std::sync::Arc;

    fn request(dir: &Path, hosts: &[&str], clients: &[&str]) -> InitRequest {
        InitRequest {
            dir: dir.to_owned(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            clients: clients.iter().map(|c| (*c).to_owned()).collect(),
            valid_for: Duration::from_secs(86_400),
        }
    }

    /// Verifies `cert` against `ca` for `usage` the way rustls's webpki does.
    fn verify_server(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certificates(ca).unwrap() {
            roots.add(ca).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::crypto_provider(),
        )
        .build()
        .unwrap();
        let chain = load_certificates(cert).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn init_makes_a_ca_a_server_certificate_and_client_certificates_that_verify() {
        let dir = tempfile::tempdir().unwrap();
        let written = init(&request(
            dir.path(),
            &["collector.example.com", "127.0.0.1"],
            &["web-01"],
        ))
        .unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "server.pem",
                "server.key",
                "client-web-01.pem",
                "client-web-01.key"
            ]
        );
        let ca = dir.path().join(CA_CERT);
        let server = dir.path().join(SERVER_CERT);
        verify_server(&ca, &server, "collector.example.com").unwrap();
        verify_server(&ca, &server, "127.0.0.1").unwrap();
        let wrong = verify_server(&ca, &server, "other.example.com").unwrap_err();
        assert!(
            format!("{wrong:?}").contains("NotValidForName"),
            "{wrong:?}"
        );

        // The pair loads as the collector's certificate, with the CA for client certificates.
        server_config(
            &TlsFiles {
                cert_file: server,
                key_file: dir.path().join(SERVER_KEY),
                client_ca_file: Some(ca),
            },
            b"h2",
        )
        .unwrap();

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in [CA_KEY, SERVER_KEY, "client-web-01.key"] {
                let mode = std::fs::metadata(dir.path().join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
    }

    #[test]
    fn a_second_run_reuses_the_ca_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        init(&request(dir.path(), &["collector"], &[])).unwrap();
        let ca_before = std::fs::read(dir.path().join(CA_CERT)).unwrap();
        let written = init(&request(dir.path(), &[], &["db-01"])).unwrap();
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(std::fs::read(dir.path().join(CA_CERT)).unwrap(), ca_before);

        let error = init(&request(dir.path(), &["collector"], &[])).unwrap_err();
        assert!(
            format!("{error:#}").contains("server.pem` already exists"),
            "{error:#}"
        );
        let error = init(&request(dir.path(), &[], &[])).unwrap_err();
        assert!(format!("{error:#}").contains("at least one `--host`"));
        let error = init(&request(dir.path(), &[], &["../x"])).unwrap_err();
        assert!(
            format!("{error:#}").contains("`../x` is not a host name"),
            "{error:#}"
        );
    }

    #[test]
    fn bad_pem_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let error = load_certificates(&junk).unwrap_err();
        assert!(
            format!("{error:#}").contains(&format!("`{}` holds no", junk.display())),
            "{error:#}"
        );
        let error = crate::tls::load_private_key(&junk).unwrap_err();
        assert!(
            format!("{error:#}").contains(&format!("`{}` holds no usable", junk.display())),
            "{error:#}"
        );
        let missing = dir.path().join("missing.pem");
        let error = load_certificates(&missing).unwrap_err();
        assert!(
            format!("{error:#}").contains("failed to read certificate file"),
            "{error:#}"
        );
    }
}
