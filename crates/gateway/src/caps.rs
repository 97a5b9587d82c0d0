//! Per-key and per-address caps on the hub connections this node holds (docs/security.md,
//! "Limits"). Every transport's session takes a [`Slot`] before it starts (before the
//! WebSocket upgrade, before a Server-Sent Events stream or the first poll is answered) and
//! gives it back when it is dropped, so the counts are exact whatever way a connection ends.
//! Per node: a cluster of n nodes admits up to n times the cap (no shared counter to reach).
use herald_domain::KeyId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The client's address, as the HTTP server in front of the router determined it: the peer,
/// or the last address of the proxy header the operator named (`HERALD_CLIENT_ADDRESS_HEADER`).
/// The server puts it in every request's extensions; without it the gateway falls back to
/// axum's `ConnectInfo<SocketAddr>`, and without that the address is not capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Who a connection counts against: a virtual key, or the master key (one caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    Master,
    Key(KeyId),
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    Key(usize),
    Address(usize),
}

impl Over {
    /// The refusal's text: the limit and the setting that raises it.
    pub(crate) fn text(self) -> String {
        match self {
            Over::Key(n) => format!(
                "too many connections for this key on this node (at most {n}, \
                 HERALD_MAX_CONNECTIONS_PER_KEY); close some or retry later"
            ),
            Over::Address(n) => format!(
                "too many connections from this address on this node (at most {n}, \
                 HERALD_MAX_CONNECTIONS_PER_ADDRESS); close some or retry later"
            ),
        }
    }

    /// `herald_connections_rejected_total{reason}`.
    pub(crate) fn metric_reason(self) -> &'static str {
        match self {
            Over::Key(_) => "key_limit",
            Over::Address(_) => "address_limit",
        }
    }
}

#[derive(Default)]
struct Counts {
    callers: HashMap<Caller, usize>,
    addresses: HashMap<IpAddr, usize>,
    last_warning: Option<Instant>,
}

pub(crate) struct Caps {
    per_key: usize,
    per_address: usize,
    counts: Mutex<Counts>,
}

/// A connection's place under the caps; dropping it frees the place.
pub(crate) struct Slot {
    _held: Box<Held>,
}

struct Held {
    caps: Arc<Caps>,
    caller: Caller,
    address: Option<IpAddr>,
}

/// What the address cap counts: IPv4 addresses (IPv4-mapped IPv6 included) one by one, other
/// IPv6 addresses per /64 (one host usually has a whole /64 to pick from).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Caps {
    pub(crate) fn new(per_key: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            per_key,
            per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a place for `caller` from `address`, or says which cap is full.
    pub(crate) fn take(
        self: &Arc<Self>,
        caller: Caller,
        address: Option<IpAddr>,
    ) -> Result<Slot, Over> {
        let address = address.map(address_key);
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let over = if c.callers.get(&caller).copied().unwrap_or(0) >= self.per_key {
            Some(Over::Key(self.per_key))
        } else if address
            .is_some_and(|a| c.addresses.get(&a).copied().unwrap_or(0) >= self.per_address)
        {
            Some(Over::Address(self.per_address))
        } else {
            None
        };
        if let Some(over) = over {
            // Operators learn of it (a proxy whose address every client shares shows here),
            // without a line per refused attempt.
            if c.last_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                c.last_warning = Some(Instant::now());
                let key_id = match caller {
                    Caller::Key(id) => Some(id.get()),
                    Caller::Master => None,
                };
                tracing::warn!(
                    ?over,
                    key_id,
                    address = ?address,
                    "hub connection cap reached; refusing with 429 (HERALD_MAX_CONNECTIONS_PER_KEY, \
                     HERALD_MAX_CONNECTIONS_PER_ADDRESS)"
                );
            }
            return Err(over);
        }
        *c.callers.entry(caller).or_insert(0) += 1;
        if let Some(a) = address {
            *c.addresses.entry(a).or_insert(0) += 1;
        }
        Ok(Slot {
            _held: Box::new(Held {
                caps: self.clone(),
                caller,
                address,
            }),
        })
    }

    /// Open connections counted for `caller` and for `address` (tests).
    #[cfg(test)]
    fn counted(&self, caller: Caller, address: IpAddr) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        (
            c.callers.get(&caller).copied().unwrap_or(0),
            c.addresses.get(&address_key(address)).copied().unwrap_or(0),
        )
    }
}

/// Counts go down by one; an entry at zero is removed, so the maps only ever hold callers and
/// addresses with a connection open.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self
            .caps
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        release(&mut c.callers, &self.caller);
        if let Some(a) = &self.address {
            release(&mut c.addresses, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: i64) -> Caller {
        Caller::Key(KeyId::new(n).unwrap())
    }

    #[test]
    fn each_cap_refuses_past_its_limit_and_frees_on_drop() {
        let caps = Caps::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = caps.take(key(1), Some(a)).unwrap();
        let _s2 = caps.take(key(1), Some(a)).unwrap();
        assert_eq!(caps.take(key(2), Some(a)).err(), Some(Over::Address(2)));
        let _s3 = caps.take(key(1), Some(b)).unwrap();
        assert_eq!(caps.take(key(1), Some(b)).err(), Some(Over::Key(3)));
        // Another key from another address is not affected; an unknown address is capped per key only.
        let _s4 = caps.take(key(2), Some(b)).unwrap();
        assert_eq!(caps.take(key(1), None).err(), Some(Over::Key(3)));
        let _m = caps.take(Caller::Master, None).unwrap();
        drop(s1);
        assert_eq!(caps.counted(key(1), a), (2, 1));
        let _s5 = caps.take(key(1), Some(a)).unwrap();
        assert!(
            Over::Key(3)
                .text()
                .contains("HERALD_MAX_CONNECTIONS_PER_KEY")
        );
        assert!(
            Over::Address(2)
                .text()
                .contains("HERALD_MAX_CONNECTIONS_PER_ADDRESS")
        );
    }

    #[test]
    fn entries_go_when_their_last_connection_does_and_ipv6_counts_per_64() {
        let caps = Caps::new(10, 1);
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let s = caps.take(key(1), Some(x)).unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(
            caps.take(key(2), Some(same_64)).err(),
            Some(Over::Address(1))
        );
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        let m = caps.take(key(2), Some(mapped)).unwrap();
        assert_eq!(caps.counted(key(2), "10.0.0.9".parse().unwrap()), (1, 1));
        drop((s, m));
        let c = caps.counts.lock().unwrap();
        assert!(c.callers.is_empty() && c.addresses.is_empty());
    }
}
