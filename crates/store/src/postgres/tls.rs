//! TLS to PostgreSQL, with libpq's meanings of `sslmode` and `sslrootcert`.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` and leaves certificate checks to
//! the connector; libpq's `verify-ca`, `verify-full` and `sslrootcert` are read here, taken
//! out of the URL before tokio-postgres parses it, and turned into a rustls verifier:
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | only with `sslrootcert` (chain, not name) |
//! | `require` | always | only with `sslrootcert` (chain, not name) |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert` and the host name |
//!
//! As in libpq, `sslrootcert` defaults to `~/.postgresql/root.crt`, and
//! `sslrootcert=system` means the operating system's trust store.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values that tokio-postgres does not know apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not supported (use disable, prefer, require, verify-ca or verify-full)"
                ));
            }
        })
    }

    fn wire(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => SslMode::Require,
        }
    }
}

/// Where the trusted certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// `sslrootcert` not given: libpq's default file, used when it exists.
    Default,
    File(PathBuf),
    System,
}

/// A connection configuration and the TLS connector that honours its `sslmode`.
pub(crate) struct Connection {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
}

/// Parses `url` (`postgres://…` or libpq's `key=value` form) into a configuration and a
/// connector.
///
/// # Errors
/// A one-line description of what is wrong: the URL does not parse, `sslmode` is unknown,
/// `sslrootcert` cannot be read or holds no certificate, a verifying mode has no
/// certificate to trust, or client certificates (`sslcert`, `sslkey`) are asked for.
pub(crate) fn connection(url: &str) -> Result<Connection, String> {
    let (rest, ssl) = take_ssl_params(url);
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| format!("storage.url is not a PostgreSQL URL: {}", super::one_line(&e.to_string())))?;
    let mut mode = Mode::Prefer;
    let mut roots = Roots::Default;
    for (key, value) in ssl {
        match key.as_str() {
            "sslmode" => mode = Mode::parse(&value)?,
            "sslrootcert" if value == "system" => roots = Roots::System,
            "sslrootcert" => roots = Roots::File(PathBuf::from(value)),
            other => {
                return Err(format!(
                    "{other} (a client certificate) is not supported yet; authenticate with a password"
                ));
            }
        }
    }
    config.ssl_mode(mode.wire());
    let tls = MakeRustlsConnect::new(client_config(mode, &roots)?);
    Ok(Connection { config, tls })
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of `url`, decoded, and
/// returns what remains for tokio-postgres.
fn take_ssl_params(url: &str) -> (String, Vec<(String, String)>) {
    const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), taken) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(key).decode_utf8_lossy().into_owned();
            if OURS.contains(&key.as_str()) {
                taken.push((key, percent_decode_str(value).decode_utf8_lossy().into_owned()));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        (rest, taken)
    } else {
        // libpq's `key=value` form; values with spaces (quoted) are left to tokio-postgres.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if OURS.contains(&key) => taken.push((key.to_owned(), value.to_owned())),
                _ => kept.push(word),
            }
        }
        (kept.join(" "), taken)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: Mode, roots: &Roots) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        Mode::Disable | Mode::Prefer | Mode::Require => match load_roots(roots, false)? {
            // libpq: with a root certificate at hand, `require` checks the chain as
            // `verify-ca` does.
            Some(store) => Arc::new(ChainOnly(webpki(store, &provider)?)),
            None => Arc::new(Unchecked(provider)),
        },
        Mode::VerifyCa | Mode::VerifyFull => {
            let store = load_roots(roots, true)?.expect("a verifying mode requires its roots");
            let full = webpki(store, &provider)?;
            if mode == Mode::VerifyFull { full } else { Arc::new(ChainOnly(full)) }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

fn webpki(store: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("cannot use the trusted certificates: {e}"))
}

/// The certificates to trust; `None` when none are configured and `required` is false.
fn load_roots(roots: &Roots, required: bool) -> Result<Option<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    let path = match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            if let Some(e) = found.errors.first()
                && found.certs.is_empty()
            {
                return Err(format!("sslrootcert=system: cannot read the system's trusted certificates: {e}"));
            }
            store.add_parsable_certificates(found.certs);
            return Ok(Some(store));
        }
        Roots::File(path) => path.clone(),
        Roots::Default => {
            let default = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
            match default {
                Some(path) if path.exists() => path,
                _ if required => {
                    return Err("a verifying sslmode needs the certificates to trust: add sslrootcert=<file> \
                                (PEM) or sslrootcert=system to storage.url"
                        .to_owned());
                }
                _ => return Ok(None),
            }
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(Iterator::collect)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("sslrootcert {}: no certificate in it", path.display()));
    }
    Ok(Some(store))
}

/// Checks the chain to a trusted root, not the name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain held.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Encrypts without checking who is at the other end (libpq's `prefer` and `require`
/// without a root certificate); the handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_of_the_url_decoded() {
        let (rest, taken) = take_ssl_params(
            "postgres://u:p@db.example:5433/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db.example:5433/app?application_name=x");
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned())
            ]
        );
        let (rest, taken) = take_ssl_params("host=db sslmode=require dbname=app");
        assert_eq!(rest, "host=db dbname=app");
        assert_eq!(taken, vec![("sslmode".to_owned(), "require".to_owned())]);
        assert_eq!(take_ssl_params("postgres://db/app").0, "postgres://db/app");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_the_reason() {
        let err = |url: &str| connection(url).err().expect("refused");
        assert!(err("postgres://db/app?sslmode=allow").contains("sslmode=allow is not supported"));
        assert!(err("postgres://db/app?sslcert=/c.pem").contains("not supported yet"));
        assert!(
            err("postgres://db/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").contains("/nonexistent/ca.pem")
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = format!("postgres://db/app?sslmode=verify-full&sslrootcert={}", empty.display());
        assert!(err(&url).contains("no certificate"));
    }

    #[test]
    fn modes_map_to_what_the_wire_asks_for() {
        let mode = |url: &str| connection(url).map(|c| c.config.get_ssl_mode()).unwrap();
        assert_eq!(mode("postgres://db/app"), SslMode::Prefer);
        assert_eq!(mode("postgres://db/app?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("postgres://db/app?sslmode=require"), SslMode::Require);
    }
}
