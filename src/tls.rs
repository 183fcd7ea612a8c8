//! TLS for the client port and the cluster bus, with rustls on the `ring` provider. The
//! certificates and keys come from PEM files named in the configuration and are read once at
//! start; errors name the option, never the key's contents. The cluster bus uses mutual TLS
//! against the grid's own CA: like Redis's `tls-cluster`, a peer is trusted for carrying a
//! certificate that CA signed, whatever address it is reached at (node certificates then need
//! no SAN per announced address).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::Config;

/// How long a connecting client or peer may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Client certificates on the TLS client port (`tls-auth-clients`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsAuthClients {
    /// A client must present a certificate signed by `tls-ca-cert-file` (Redis's default).
    #[default]
    Yes,
    /// A certificate is verified when presented; clients without one are let in.
    Optional,
    /// No certificate is asked for.
    No,
}

impl TlsAuthClients {
    /// Redis's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsAuthClients::Yes => "yes",
            TlsAuthClients::Optional => "optional",
            TlsAuthClients::No => "no",
        }
    }
}

/// Why TLS could not be set up: always names the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {option} '{path}': {source}")]
    Read {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file holds nothing usable (the key's contents are never quoted).
    #[error("{option} '{path}': {reason}")]
    Invalid {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A required option is missing, or a value is wrong.
    #[error("{option}: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// TLS material for the node, built from the configuration.
pub struct NodeTls {
    /// Accepts TLS clients on `tls-port`; None without one.
    pub client: Option<TlsAcceptor>,
    /// Mutual TLS on the cluster bus; None unless `tls-cluster`.
    pub bus: Option<BusTls>,
}

/// Both ends of mutual TLS on the cluster bus.
#[derive(Clone)]
pub struct BusTls {
    /// Accepts peers: a certificate signed by the CA is required.
    pub acceptor: TlsAcceptor,
    /// Connects to peers, presenting this node's certificate.
    pub connector: TlsConnector,
}

impl BusTls {
    /// The name a peer at `addr` (`host:port`) is asked under: SNI only, since peers are
    /// verified against the CA, not by name.
    pub fn server_name(addr: &str) -> ServerName<'static> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(|c| c == '[' || c == ']');
        ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("cachegrid-node").expect("a valid DNS name"))
    }
}

/// Checks the TLS options hang together, without touching the files (`Config::validate`).
pub fn validate(config: &Config) -> Result<(), TlsError> {
    let missing =
        |option: &'static str, why: &str| TlsError::Option { option, reason: format!("required {why}") };
    let serves = config.tls_port.is_some();
    if config.tls_only && !serves {
        return Err(TlsError::Option { option: "tls-only", reason: "needs tls-port".into() });
    }
    if serves || config.tls_cluster {
        let why = if serves { "with tls-port" } else { "with tls-cluster" };
        if config.tls_cert_file.is_none() {
            return Err(missing("tls-cert-file", why));
        }
        if config.tls_key_file.is_none() {
            return Err(missing("tls-key-file", why));
        }
    }
    if config.tls_cluster && config.tls_ca_cert_file.is_none() {
        return Err(missing("tls-ca-cert-file", "with tls-cluster (peers are verified against it)"));
    }
    if serves && config.tls_auth_clients != TlsAuthClients::No && config.tls_ca_cert_file.is_none() {
        return Err(missing(
            "tls-ca-cert-file",
            "to verify client certificates (or set tls-auth-clients no)",
        ));
    }
    protocols(&config.tls_protocols)?;
    Ok(())
}

/// Loads the certificates and keys the configuration names and builds the TLS settings.
pub fn load(config: &Config) -> Result<NodeTls, TlsError> {
    validate(config)?;
    if config.tls_port.is_none() && !config.tls_cluster {
        return Ok(NodeTls { client: None, bus: None });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = protocols(&config.tls_protocols)?;
    let cert_path = config.tls_cert_file.as_deref().expect("validated");
    let key_path = config.tls_key_file.as_deref().expect("validated");
    let certs = read_certs("tls-cert-file", cert_path)?;
    let key = read_key(key_path)?;
    let roots = match config.tls_ca_cert_file.as_deref() {
        Some(p) => Some(Arc::new(read_roots(p)?)),
        None => None,
    };
    let key_error = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Invalid {
            option: "tls-key-file",
            path: key_path.to_path_buf(),
            reason: "does not match the certificate in tls-cert-file".into(),
        },
        e => {
            TlsError::Invalid { option: "tls-key-file", path: key_path.to_path_buf(), reason: e.to_string() }
        }
    };
    let server_builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| TlsError::Option { option: "tls-protocols", reason: e.to_string() })
    };
    let client = match config.tls_port {
        None => None,
        Some(_) => {
            let builder = server_builder()?;
            let builder = match (config.tls_auth_clients, &roots) {
                (TlsAuthClients::No, _) | (_, None) => builder.with_no_client_auth(),
                (auth, Some(roots)) => {
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                    let verifier = if auth == TlsAuthClients::Optional {
                        verifier.allow_unauthenticated()
                    } else {
                        verifier
                    };
                    builder.with_client_cert_verifier(verifier.build().map_err(|e| ca_error(config, e))?)
                }
            };
            let server = builder.with_single_cert(certs.clone(), key.clone_key()).map_err(key_error)?;
            Some(TlsAcceptor::from(Arc::new(server)))
        }
    };
    let bus = match (config.tls_cluster, roots) {
        (true, Some(roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| ca_error(config, e))?;
            let server = server_builder()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs.clone(), key.clone_key())
                .map_err(key_error)?;
            let client = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions)
                .map_err(|e| TlsError::Option { option: "tls-protocols", reason: e.to_string() })?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(GridCaVerifier { roots, provider }))
                .with_client_auth_cert(certs, key)
                .map_err(key_error)?;
            Some(BusTls {
                acceptor: TlsAcceptor::from(Arc::new(server)),
                connector: TlsConnector::from(Arc::new(client)),
            })
        }
        _ => None,
    };
    Ok(NodeTls { client, bus })
}

fn ca_error(config: &Config, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        option: "tls-ca-cert-file",
        path: config.tls_ca_cert_file.clone().unwrap_or_default(),
        reason: e.to_string(),
    }
}

/// `tls-protocols`: `TLSv1.2`, `TLSv1.3` or both, space-separated as in Redis.
fn protocols(value: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let mut out = Vec::new();
    for word in value.split_whitespace() {
        let v = match word.to_ascii_lowercase().as_str() {
            "tlsv1.2" => &rustls::version::TLS12,
            "tlsv1.3" => &rustls::version::TLS13,
            _ => {
                return Err(TlsError::Option {
                    option: "tls-protocols",
                    reason: format!("unsupported protocol '{word}' (TLSv1.2 and TLSv1.3 are)"),
                })
            }
        };
        if !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Err(TlsError::Option { option: "tls-protocols", reason: "names no protocol".into() });
    }
    Ok(out)
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { option, path: path.to_path_buf(), source })
}

fn read_certs(option: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid { option, path: path.to_path_buf(), reason };
    let pem = read(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Reads the private key. Parse errors are summed up without detail: they could quote the key.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("tls-key-file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Invalid {
        option: "tls-key-file",
        path: path.to_path_buf(),
        reason: "holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("tls-ca-cert-file", path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            option: "tls-ca-cert-file",
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Verifies a cluster peer's certificate chain against the grid's CA, not its name (see the
/// module comment).
#[derive(Debug)]
struct GridCaVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for GridCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
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
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_take_redis_spelling() {
        assert_eq!(protocols("TLSv1.2 TLSv1.3").unwrap().len(), 2);
        assert_eq!(protocols("tlsv1.3").unwrap().len(), 1);
        assert!(protocols("TLSv1.1").is_err());
        assert!(protocols("").is_err());
    }

    #[test]
    fn a_peer_is_asked_for_by_ip_or_name() {
        assert!(matches!(BusTls::server_name("127.0.0.1:17001"), ServerName::IpAddress(_)));
        assert!(matches!(BusTls::server_name("[::1]:17001"), ServerName::IpAddress(_)));
        assert!(matches!(BusTls::server_name("node-a:17001"), ServerName::DnsName(_)));
    }

    #[test]
    fn options_that_need_files_say_which() {
        let c = Config { tls_port: Some(0), ..Config::default() };
        assert!(validate(&c).unwrap_err().to_string().starts_with("tls-cert-file"));
        let c = Config { tls_only: true, ..Config::default() };
        assert!(validate(&c).unwrap_err().to_string().starts_with("tls-only"));
        let c = Config {
            tls_cluster: true,
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            ..Config::default()
        };
        assert!(validate(&c).unwrap_err().to_string().starts_with("tls-ca-cert-file"));
    }
}
