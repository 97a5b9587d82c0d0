//! TLS client settings for the dependencies (Redis, RabbitMQ, PostgreSQL): the PEM text of the
//! files `HERALD_TLS_CA_FILE`, `HERALD_TLS_CERT_FILE` and `HERALD_TLS_KEY_FILE` name, read and
//! checked at start-up by the binary. Plain data, no I/O: each dependency's crate builds its
//! own rustls client from it (docs/security.md, "TLS to the dependencies"). It only applies to
//! a dependency whose URL asks for TLS (`rediss://`, `amqps://`, `sslmode=require` or stricter).

/// What every TLS connection to a dependency trusts and presents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM certificates trusted to sign the servers' certificates. `None`: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate for servers that ask for one (mutual TLS).
    pub identity: Option<ClientIdentity>,
}

/// A PEM certificate chain (the client's certificate first) and its PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl ClientTls {
    /// Nothing configured: system roots, no client certificate.
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.identity.is_none()
    }
}

/// The key is never printed; certificates are public but long, so only their presence shows.
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "set"))
            .field("identity", &self.identity)
            .finish()
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(***)")
    }
}
