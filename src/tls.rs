//! TLS for a node: its certificates and keys, and the three kinds of handshake.
//!
//! Owns: reading the CA bundle, the node's certificate chain and its private key from
//! PEM files (each failure a sentence naming the file, never quoting key material), the
//! check of the key file's permissions, the rustls configurations (HTTPS for clients;
//! the peer acceptor, which demands a client certificate from the CA; the peer dialer,
//! which presents ours and verifies the responder's against the CA and the dialed node
//! id), which cluster members a peer's certificate names, and the `reason` label of a
//! failed handshake. The crypto provider is rustls's `ring`.
//! Knows nothing of: what travels inside (HTTP, frames), where streams come from (the
//! node's `Transport`), the cluster file (it receives paths and member ids).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::clock::NodeId;

/// Where a node's TLS material is (resolved paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA bundle: certificates that sign every node's certificate.
    pub ca: PathBuf,
    /// This node's certificate chain, its own certificate first.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Why the TLS material cannot be used. Every sentence names the file; none quotes
/// its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not what it should be (not PEM, no certificate, no key, …).
    #[error("{}: {reason}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate and the key do not fit together, or rustls refused them.
    #[error("{0}")]
    Mismatch(String),
}

/// The ids of the members, with the name a certificate must carry for each.
type Members = Vec<(NodeId, ServerName<'static>)>;

/// A node's TLS: the acceptors and the connector, ready to wrap streams.
#[derive(Clone)]
pub struct NodeTls {
    https: TlsAcceptor,
    peer_acceptor: TlsAcceptor,
    peer_connector: TlsConnector,
    members: Arc<Members>,
    /// This node's own certificate.
    leaf: CertificateDer<'static>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

/// The name a node's certificate carries for node `id` (a DNS SAN equal to the id), or
/// `None` if the id cannot be one (e.g. all digits).
pub fn server_name(id: &NodeId) -> Option<ServerName<'static>> {
    ServerName::try_from(id.as_str().to_owned())
        .ok()
        .filter(|name| matches!(name, ServerName::DnsName(_)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A PEM parse error as a sentence that quotes nothing of the file (it may be a key).
fn pem_reason(error: &pem::Error, what: &str) -> String {
    match error {
        pem::Error::NoItemsFound => format!("holds no {what} (expected PEM)"),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        pem::Error::SectionTooLarge => "a PEM section is too large".into(),
        pem::Error::Io(error) => format!("cannot be read: {error}"),
        _ => "is not valid PEM".into(),
    }
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let bad = |reason: String| TlsError::Bad {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(pem_reason(&error, "certificate")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate (expected PEM)".into()));
    }
    for cert in &certs {
        webpki::EndEntityCert::try_from(cert)
            .map_err(|error| bad(format!("holds a certificate that does not parse: {error}")))?;
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| TlsError::Bad {
        path: path.to_owned(),
        reason: pem_reason(&error, "private key"),
    })
}

/// A warning if the key file at `path` may be read by its group or by others.
pub fn key_permissions_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "the private key {} is readable by its group or by others (mode {:o}); `chmod 600` it",
            path.display(),
            mode & 0o777
        )
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    /// Loads the material at `paths` for a cluster of `members` (this node included).
    pub fn load(paths: &TlsPaths, members: &[NodeId]) -> Result<Self, TlsError> {
        let ca = load_certificates(&paths.ca)?;
        let chain = load_certificates(&paths.cert)?;
        let key = load_private_key(&paths.key)?;
        let leaf = chain[0].clone();
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|error| TlsError::Bad {
                path: paths.ca.clone(),
                reason: format!("holds a certificate that cannot be a CA: {error}"),
            })?;
        }
        let roots = Arc::new(roots);
        let mismatch = |error: rustls::Error| {
            TlsError::Mismatch(format!(
                "the certificate {} and the key {} cannot be used together: {error}",
                paths.cert.display(),
                paths.key.display()
            ))
        };
        let versions = |error: rustls::Error| TlsError::Mismatch(error.to_string());

        let mut https = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        https.alpn_protocols = vec![b"http/1.1".to_vec()];

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|error| TlsError::Bad {
                path: paths.ca.clone(),
                reason: format!("cannot verify peers with it: {error}"),
            })?;
        let peer_server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;

        let peer_client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;

        let members = members
            .iter()
            .filter_map(|id| server_name(id).map(|name| (id.clone(), name)))
            .collect();
        Ok(Self {
            https: TlsAcceptor::from(Arc::new(https)),
            peer_acceptor: TlsAcceptor::from(Arc::new(peer_server)),
            peer_connector: TlsConnector::from(Arc::new(peer_client)),
            members: Arc::new(members),
            leaf,
        })
    }

    /// Whether this node's own certificate names node `id` (checked at start: peers
    /// refuse a node whose certificate does not name it).
    pub fn own_certificate_names(&self, id: &NodeId) -> bool {
        let Some(name) = server_name(id) else {
            return false;
        };
        webpki::EndEntityCert::try_from(&self.leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// The acceptor of client HTTPS connections (no client certificate asked).
    pub fn https(&self) -> &TlsAcceptor {
        &self.https
    }

    /// The acceptor of peer connections: the dialer must present a certificate of the
    /// CA.
    pub fn peer_acceptor(&self) -> &TlsAcceptor {
        &self.peer_acceptor
    }

    /// The dialer of peer connections: presents this node's certificate; the
    /// responder's must come from the CA and name the node dialed (see [`server_name`]).
    pub fn peer_connector(&self) -> &TlsConnector {
        &self.peer_connector
    }

    /// The members that `cert` (already verified against the CA) names.
    pub fn members_named(&self, cert: &CertificateDer<'_>) -> Vec<NodeId> {
        let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
            return Vec::new();
        };
        self.members
            .iter()
            .filter(|(_, name)| cert.verify_is_valid_for_subject_name(name).is_ok())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The `reason` of a failed peer handshake, as `metrics::PEER_TLS_REFUSALS` names them.
pub fn peer_refusal_reason(error: &io::Error) -> &'static str {
    use rustls::CertificateError;
    match rustls_error(error) {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "unknown_ca",
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "wrong_name",
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        _ => "handshake",
    }
}

/// The `reason` of a failed client handshake, as `metrics::HTTP_TLS_FAILURES` names them.
pub fn http_failure_reason(error: &io::Error) -> &'static str {
    match rustls_error(error) {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "plaintext"
        }
        _ => "handshake",
    }
}

/// Whether a peer handshake failed because the other side refused us (an alert): not
/// a refusal of ours, so not counted here.
pub fn refused_by_other_side(error: &io::Error) -> bool {
    matches!(rustls_error(error), Some(rustls::Error::AlertReceived(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn bad_pem_is_refused_naming_the_file_and_quoting_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let secret_line = "-----BEGIN PRIVATE KEY----- SECRETSECRET";
        let cases = [
            ("empty.pem", "", "holds no certificate"),
            ("text.pem", "hello, not pem\n", "holds no certificate"),
            (
                "open.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n",
                "has no END line",
            ),
            (
                "base64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "not valid base64",
            ),
            (
                "garbage.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "does not parse",
            ),
        ];
        for (name, text, expected) in cases {
            let path = write(dir.path(), name, text);
            let error = load_certificates(&path).unwrap_err().to_string();
            assert!(error.contains(name), "{error}");
            assert!(error.contains(expected), "{name}: {error}");
        }
        let missing = load_certificates(&dir.path().join("absent.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read") && missing.contains("absent.pem"),
            "{missing}"
        );
        for (name, text, expected) in [
            ("none.key", "no key here\n", "holds no private key"),
            (
                "broken.key",
                &format!("{secret_line}\nSECRETSECRET\n"),
                "PEM",
            ),
        ] {
            let path = write(dir.path(), name, text);
            let error = load_private_key(&path).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(expected), "{error}");
            assert!(!error.contains("SECRET"), "key material quoted: {error}");
        }
    }

    /// A CA and a certificate for `name` signed by it, as PEM: (ca, cert, key).
    fn material(name: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    #[test]
    fn good_material_loads_and_a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = material("n1");
        let (_, _, other_key) = material("n2");
        let paths = TlsPaths {
            ca: write(dir.path(), "ca.pem", &ca),
            cert: write(dir.path(), "n1.pem", &cert),
            key: write(dir.path(), "n1.key", &key),
        };
        let members = [NodeId::new("n1").unwrap(), NodeId::new("n2").unwrap()];
        let tls = NodeTls::load(&paths, &members).unwrap();
        assert!(tls.own_certificate_names(&members[0]));
        assert!(!tls.own_certificate_names(&members[1]));
        let leaf = load_certificates(&paths.cert).unwrap().remove(0);
        assert_eq!(tls.members_named(&leaf), vec![members[0].clone()]);

        let wrong = TlsPaths {
            key: write(dir.path(), "other.key", &other_key),
            ..paths.clone()
        };
        let error = NodeTls::load(&wrong, &members).unwrap_err().to_string();
        assert!(
            error.contains("n1.pem") && error.contains("other.key"),
            "{error}"
        );
        // The CA file must hold certificates, not a key.
        let bad_ca = TlsPaths {
            ca: paths.key.clone(),
            ..paths
        };
        let error = NodeTls::load(&bad_ca, &members).unwrap_err().to_string();
        assert!(
            error.contains("n1.key") && error.contains("holds no certificate"),
            "{error}"
        );
    }

    #[test]
    fn node_ids_that_cannot_be_dns_names_are_told_apart() {
        for (id, valid) in [("n1", true), ("node_a", true), ("a-b", true), ("7", false)] {
            let id = NodeId::new(id).unwrap();
            assert_eq!(server_name(&id).is_some(), valid, "{id}");
        }
    }

    #[test]
    fn a_group_readable_key_gets_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "n1.key", "x");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_permissions_warning(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = key_permissions_warning(&path).unwrap();
        assert!(
            warning.contains("n1.key") && warning.contains("644"),
            "{warning}"
        );
    }
}
