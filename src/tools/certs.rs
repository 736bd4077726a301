//! Throwaway TLS material for a local cluster: a CA and one certificate per node.
//!
//! Owns: generating a CA and node certificates with `rcgen` (ECDSA P-256; each node
//! certificate names the node id as a DNS name and its IPs, good for server and client
//! authentication, as API.md §3.6 asks), and writing them as PEM files, keys with mode
//! 0600. Used by `meshkv demo --secure` and the tests; a real deployment brings its own
//! CA.
//! Knows nothing of: the server; it writes files that the cluster file names.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority held in memory.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A node certificate and its private key, as PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

fn failed(error: rcgen::Error) -> String {
    format!("cannot generate TLS material: {error}")
}

impl Authority {
    /// A new CA named `name`. Like its certificates, it keeps rcgen's default validity
    /// (1975 to 4096): throwaway material, never to be trusted beyond a demo or a test.
    pub fn generate(name: &str) -> Result<Self, String> {
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (what clients and nodes trust).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for a node that names `dns_names` (its id first) and `ips`.
    pub fn issue(&self, dns_names: &[&str], ips: &[IpAddr]) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        if let Some(first) = dns_names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        for name in dns_names {
            let name = (*name).to_owned().try_into().map_err(failed)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `text` to `path`, readable by its owner alone (`0600`) when `private`.
pub fn write_file(path: &Path, text: &str, private: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let written = options
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    written.map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// The files of one node, relative to the cluster file's directory.
pub struct NodeFiles {
    /// `tls/<id>.pem`.
    pub cert: PathBuf,
    /// `tls/<id>.key`.
    pub key: PathBuf,
}

/// Writes `tls/ca.pem` and `tls/<id>.pem`, `tls/<id>.key` for each `(id, ip)` under
/// `dir` (the cluster file's directory); returns the CA and each node's files,
/// relative to `dir`.
pub fn write_cluster(
    dir: &Path,
    nodes: &[(&str, IpAddr)],
) -> Result<(Authority, Vec<NodeFiles>), String> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)
        .map_err(|error| format!("cannot create {}: {error}", tls.display()))?;
    let ca = Authority::generate("meshkv throwaway CA")?;
    write_file(&tls.join("ca.pem"), ca.pem(), false)?;
    let mut files = Vec::new();
    for (id, ip) in nodes {
        let issued = ca.issue(&[id], &[*ip])?;
        let node = NodeFiles {
            cert: PathBuf::from("tls").join(format!("{id}.pem")),
            key: PathBuf::from("tls").join(format!("{id}.key")),
        };
        write_file(&dir.join(&node.cert), &issued.cert_pem, false)?;
        write_file(&dir.join(&node.key), &issued.key_pem, true)?;
        files.push(node);
    }
    Ok((ca, files))
}

/// Writes throwaway TLS material at the paths `config` names: a new CA at its
/// `tls_ca_file`, and for every node with `tls_cert_file` and `tls_key_file` a
/// certificate naming its id and the IPs of its addresses. Returns the files written.
/// For benchmarks and trials (`meshkv gen-certs`), never for a real deployment.
pub fn write_for_cluster(config: &crate::config::ClusterConfig) -> Result<Vec<PathBuf>, String> {
    let Some(ca_path) = config.tls_ca_path() else {
        return Err("the cluster file has no tls_ca_file: nothing to generate".into());
    };
    let ca = Authority::generate("meshkv throwaway CA")?;
    let mut written = Vec::new();
    let mut write = |path: PathBuf, text: &str, private: bool| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        write_file(&path, text, private)?;
        written.push(path);
        Ok::<_, String>(())
    };
    write(ca_path, ca.pem(), false)?;
    for node in &config.nodes {
        let (Some(cert), Some(key)) = (&node.tls_cert_file, &node.tls_key_file) else {
            continue;
        };
        let mut ips = vec![node.http.ip()];
        ips.extend(
            node.peer
                .map(|peer| peer.ip())
                .filter(|ip| *ip != node.http.ip()),
        );
        let issued = ca.issue(&[node.id.as_str()], &ips)?;
        write(config.base_dir.join(cert), &issued.cert_pem, false)?;
        write(config.base_dir.join(key), &issued.key_pem, true)?;
    }
    Ok(written)
}
