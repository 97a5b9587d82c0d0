//! PostgreSQL over TLS with rustls (ring), following libpq's `sslmode` (docs/security.md, "TLS
//! to the dependencies"). tokio-postgres knows only disable/prefer/require, so the URL's
//! `sslmode` is read here and handed on as one of those:
//! - `disable`, `allow`, `prefer` (the default): no TLS, as before TLS was supported. libpq
//!   would try TLS without checking the certificate under `allow`/`prefer`; Herald asks for an
//!   explicit mode instead of encrypting to whoever answers.
//! - `require`: TLS or nothing. Like libpq, the server's certificate is checked against
//!   `HERALD_TLS_CA_FILE` when it is set (as `verify-ca`), and not at all otherwise.
//! - `verify-ca`: the certificate must chain to `HERALD_TLS_CA_FILE` (or the system roots);
//!   its name is not checked.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! The client certificate (`HERALD_TLS_CERT_FILE`/`HERALD_TLS_KEY_FILE`) is presented when the
//! server asks for one. SCRAM channel binding is not offered (the stream reports none), which
//! PostgreSQL accepts unless the URL says `channel_binding=require`.
use herald_domain::tls::ClientTls;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// What the URL's `sslmode` asks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// `disable`, `allow`, `prefer` or none given: no TLS.
    Plain,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The tokio-postgres configuration of `url` and its libpq `sslmode`.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, SslMode), String> {
    let mut mode = SslMode::Plain;
    let mut replace = |value: &str| -> Result<&'static str, String> {
        let (m, passed) = match value {
            "disable" => (SslMode::Plain, "disable"),
            "allow" | "prefer" => (SslMode::Plain, "prefer"),
            "require" => (SslMode::Require, "require"),
            "verify-ca" => (SslMode::VerifyCa, "require"),
            "verify-full" => (SslMode::VerifyFull, "require"),
            other => {
                return Err(format!(
                    "sslmode {:?}: expected disable, allow, prefer, require, verify-ca or verify-full",
                    other.chars().take(32).collect::<String>()
                ));
            }
        };
        mode = m;
        Ok(passed)
    };
    let rewritten = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut pairs = Vec::new();
                for pair in query.split('&') {
                    pairs.push(match pair.strip_prefix("sslmode=") {
                        Some(v) => format!("sslmode={}", replace(v)?),
                        None => pair.to_owned(),
                    });
                }
                format!("{base}?{}", pairs.join("&"))
            }
        }
    } else {
        // The key=value form: `host=db sslmode=verify-full`.
        let mut words = Vec::new();
        for word in url.split_whitespace() {
            words.push(match word.strip_prefix("sslmode=") {
                Some(v) => format!("sslmode={}", replace(v)?),
                None => word.to_owned(),
            });
        }
        words.join(" ")
    };
    let config = tokio_postgres::Config::from_str(&rewritten).map_err(|e| e.to_string())?;
    Ok((config, mode))
}

/// Checks a database URL as [`crate::PostgresStore::connect`] reads it, `sslmode` included.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

/// The rustls connector for `mode`; `None` for [`SslMode::Plain`].
pub(crate) fn connector(mode: SslMode, tls: &ClientTls) -> Result<Option<RustlsConnect>, String> {
    if mode == SslMode::Plain {
        return Ok(None);
    }
    // The process's provider: ring, the only one built (as for Redis and RabbitMQ).
    let builder = ClientConfig::builder();
    let provider = builder.crypto_provider().clone();
    let roots = || -> Result<Arc<RootCertStore>, String> {
        let mut roots = RootCertStore::empty();
        match &tls.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(cert.map_err(|e| format!("CA file: {e}"))?)
                        .map_err(|e| format!("CA file: {e}"))?;
                }
            }
            None => {
                let (added, _) =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if added == 0 {
                    return Err("no system CA certificates found; set HERALD_TLS_CA_FILE".into());
                }
            }
        }
        Ok(Arc::new(roots))
    };
    let builder = match (mode, &tls.ca_pem) {
        (SslMode::VerifyFull, _) => builder.with_root_certificates(roots()?),
        // libpq's `require` checks nothing without a root certificate file.
        (SslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                chain: None,
                algorithms: provider.signature_verification_algorithms,
            })),
        _ => {
            let chain = WebPkiServerVerifier::builder_with_provider(roots()?, provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    chain: Some(chain),
                    algorithms: provider.signature_verification_algorithms,
                }))
        }
    };
    let config = match &tls.identity {
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(&id.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem)
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(RustlsConnect(Arc::new(config))))
}

/// Connects once to `url` and closes, so `migrate` and `keys` report a dead database, or a
/// refused certificate, before any work.
pub async fn probe(url: &str, tls: &ClientTls) -> Result<(), ProbeError> {
    let (config, mode) = parse(url).map_err(ProbeError::Invalid)?;
    match connector(mode, tls).map_err(ProbeError::Invalid)? {
        None => once(&config, tokio_postgres::NoTls).await,
        Some(c) => once(&config, c).await,
    }
    .map_err(ProbeError::Postgres)
}

async fn once<T>(config: &tokio_postgres::Config, tls: T) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    drop(client);
    // Driving the connection with the client gone closes it politely.
    let _ = connection.await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Postgres(tokio_postgres::Error),
}

/// `require` without a CA (checks nothing) and `verify-ca` (checks the chain, not the name).
/// The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain first and the name last: a name error means the chain held.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS connector over tokio-rustls.
#[derive(Clone)]
pub(crate) struct RustlsConnect(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsHandshake;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsHandshake, Self::Error> {
        Ok(RustlsHandshake {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

pub(crate) struct RustlsHandshake {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsHandshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let s = connector.connect(self.name, stream).await?;
            Ok(RustlsStream(s))
        })
    }
}

/// A TLS stream to the server (a newtype: tokio-postgres's trait on tokio-rustls's type).
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> Result<SslMode, String> {
        parse(url).map(|(_, m)| m)
    }

    #[test]
    fn reads_libpq_sslmodes() {
        assert_eq!(mode("postgres://h/db"), Ok(SslMode::Plain));
        assert_eq!(mode("postgres://h/db?sslmode=prefer"), Ok(SslMode::Plain));
        assert_eq!(mode("postgres://h/db?sslmode=allow"), Ok(SslMode::Plain));
        assert_eq!(
            mode("postgres://h/db?sslmode=require"),
            Ok(SslMode::Require)
        );
        assert_eq!(
            mode("postgresql://u@h:5/db?application_name=x&sslmode=verify-ca"),
            Ok(SslMode::VerifyCa)
        );
        assert_eq!(
            mode("host=h dbname=db sslmode=verify-full"),
            Ok(SslMode::VerifyFull)
        );
        let err = mode("postgres://h/db?sslmode=sometimes").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        // What tokio-postgres is given: its own word for the mode.
        let (config, _) = parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }
}
