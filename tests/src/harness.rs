//! Running the built binaries as processes on loopback ports, and talking HTTP to them without
//! a runtime. The binaries are the ones `cargo test --workspace` builds next to the test
//! (`target/<profile>/`); `ESTATE_BIN_DIR` points elsewhere.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The directory holding `estate-collector` and `estate-agent`: the running program's own
/// `target/<profile>/`, whether it is a test (in `deps/`) or a benchmark program beside them.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ESTATE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the program knows its own path");
    let dir = exe.parent().expect("the program runs from a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .expect("deps/ is inside target/<profile>")
            .to_owned()
    } else {
        dir.to_owned()
    }
}

/// The path of a built binary; panics with what to do when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "`{}` is missing: build it first (`cargo test --workspace` or `cargo build --release \
         --workspace --bins` build every binary) or point ESTATE_BIN_DIR at it",
        path.display()
    );
    path
}

/// A port that was free a moment ago (the listener is closed before returning).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding a loopback port")
}

/// A fixture tree of the agent's inventory tests.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures/inventory")
        .join(name)
}

/// A child process killed when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Sends SIGTERM (through `kill`, so this builds everywhere) and waits, at most 20 s, for
    /// the exit status: the graceful shutdown under test.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().expect("waiting for the process") {
                return status;
            }
            assert!(Instant::now() < deadline, "process {pid} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL: no graceful shutdown) and reaps it.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `condition` every 50 ms for up to `limit`: the processes run on their own clocks.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// `GET` of an `http://` url: `(status, body)`, `None` when the connection fails.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (address, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(address, path)| {
            (address, format!("/{path}"))
        });
    http::get(address, &path, None)
}

/// Blocking HTTP over TLS (rustls) or plain TCP, enough for loopback tests without a runtime.
pub mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::Path;
    use std::sync::Arc;

    /// A client config trusting only the CA in `ca_file`.
    pub fn client_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// `GET path` on `address` (`host:port`); `None` when the connection or the TLS
    /// handshake fails.
    pub fn get(
        address: &str,
        path: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Option<(u16, String)> {
        call(address, "GET", path, None, tls).map(|(status, _, body)| (status, body))
    }

    /// `method path` with `Authorization: Bearer <token>` when a token is given:
    /// `(status, response head, body)`.
    pub fn call(
        address: &str,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Option<(u16, String, String)> {
        let tcp = TcpStream::connect(address).ok()?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .ok()?;
        let authorization = bearer
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
        );
        let mut raw = Vec::new();
        match tls {
            None => {
                let mut stream = tcp;
                stream.write_all(request.as_bytes()).ok()?;
                stream.read_to_end(&mut raw).ok()?;
            }
            Some(config) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let name = rustls_pki_types::ServerName::try_from(host.to_owned()).ok()?;
                let connection = rustls::ClientConnection::new(Arc::clone(config), name).ok()?;
                let mut stream = rustls::StreamOwned::new(connection, tcp);
                stream.write_all(request.as_bytes()).ok()?;
                // The server closes without close_notify at times: keep what arrived.
                match stream.read_to_end(&mut raw) {
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {}
                    Err(_) => return None,
                }
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Some((status, head.to_owned(), body))
    }

    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = body.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if size == 0 || rest.len() < size {
                break;
            }
            out.push_str(&rest[..size]);
            body = rest[size..].trim_start_matches("\r\n");
        }
        out
    }
}
