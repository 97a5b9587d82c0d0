//! Redis over TLS (`rediss://`, `rediss+cluster://`) with the redis crate's rustls support:
//! the CA and client certificate of [`ClientTls`] go to every client built here. A URL without
//! TLS ignores them.
use herald_domain::tls::ClientTls;
use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, RedisResult, TlsCertificates};

/// The redis crate's form of `tls`; `None` when nothing is configured (system roots).
pub(crate) fn certificates(tls: &ClientTls) -> Option<TlsCertificates> {
    if tls.is_default() {
        return None;
    }
    Some(TlsCertificates {
        client_tls: tls.identity.as_ref().map(|i| ClientTlsConfig {
            client_cert: i.cert_pem.clone(),
            client_key: i.key_pem.clone(),
        }),
        root_cert: tls.ca_pem.clone(),
    })
}

pub(crate) fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// A client for `info`, with `tls`'s certificates when `info` is a TLS address.
pub(crate) fn client(info: ConnectionInfo, tls: &ClientTls) -> RedisResult<redis::Client> {
    match certificates(tls) {
        Some(certs) if is_tls(&info) => redis::Client::build_with_tls(info, certs),
        _ => redis::Client::open(info),
    }
}
