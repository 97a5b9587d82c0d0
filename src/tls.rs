//! The TLS files of the dependencies' connections (`HERALD_TLS_CA_FILE`, `HERALD_TLS_CERT_FILE`,
//! `HERALD_TLS_KEY_FILE`; docs/security.md, "TLS to the dependencies"): read and checked when
//! the settings are parsed, so an unreadable or invalid file stops start-up naming its variable
//! instead of failing on the first connection.
use herald_domain::tls::{ClientIdentity, ClientTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::PathBuf;

/// A PEM file's path and its contents.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

/// The path only: a key file's contents are never printed.
impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.path)
    }
}

fn read(v: &str) -> Result<PemFile, String> {
    let path = PathBuf::from(v.trim());
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(PemFile { path, pem })
}

fn certificates(file: &PemFile) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&file.pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", file.path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate (-----BEGIN CERTIFICATE-----) in {}",
            file.path.display()
        ));
    }
    Ok(certs)
}

/// `HERALD_TLS_CA_FILE`: one or more PEM CA certificates, each usable as a trust anchor.
pub(crate) fn ca_file(v: &str) -> Result<PemFile, String> {
    let file = read(v)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(&file)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "certificate {} in {} is not a usable CA certificate: {e}",
                i + 1,
                file.path.display()
            )
        })?;
    }
    Ok(file)
}

/// `HERALD_TLS_CERT_FILE`: the client's PEM certificate, then its intermediates.
pub(crate) fn cert_file(v: &str) -> Result<PemFile, String> {
    let file = read(v)?;
    certificates(&file)?;
    Ok(file)
}

/// `HERALD_TLS_KEY_FILE`: one PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn key_file(v: &str) -> Result<PemFile, String> {
    let file = read(v)?;
    PrivateKeyDer::from_pem_slice(&file.pem).map_err(|e| {
        format!(
            "no usable private key (-----BEGIN PRIVATE KEY-----) in {}: {e}",
            file.path.display()
        )
    })?;
    Ok(file)
}

/// The settings' TLS from the three files. `Err((variable, problem))` when only one of the
/// certificate and the key is given, or when they do not belong together.
pub(crate) fn client_tls(
    ca: Option<PemFile>,
    cert: Option<PemFile>,
    key: Option<PemFile>,
) -> Result<ClientTls, (&'static str, String)> {
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err((
                "HERALD_TLS_KEY_FILE",
                "expected the key of HERALD_TLS_CERT_FILE (both or neither)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "HERALD_TLS_CERT_FILE",
                "expected the certificate of HERALD_TLS_KEY_FILE (both or neither)".into(),
            ));
        }
        (Some(cert), Some(key)) => {
            let certs = certificates(&cert).map_err(|e| ("HERALD_TLS_CERT_FILE", e))?;
            let der = PrivateKeyDer::from_pem_slice(&key.pem)
                .map_err(|e| ("HERALD_TLS_KEY_FILE", e.to_string()))?;
            // The check every dependency's client makes: a supported key matching the certificate.
            ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_client_auth_cert(certs, der)
                .map_err(|e| {
                    (
                        "HERALD_TLS_KEY_FILE",
                        format!(
                            "{} cannot be used with {}: {e}",
                            key.path.display(),
                            cert.path.display()
                        ),
                    )
                })?;
            Some(ClientIdentity {
                cert_pem: cert.pem,
                key_pem: key.pem,
            })
        }
    };
    Ok(ClientTls {
        ca_pem: ca.map(|f| f.pem),
        identity,
    })
}
