//! Resume cursors (docs/protocol.md, "Cursors and resume"): an opaque string handed to clients in every event, encoding the
//! last position the connection delivered in each of its audiences. The text inside is
//! `vkey:42=1700000000000-0,global=1700000000001-3`, base64url without padding. Clients must
//! treat it as opaque; the server decodes it only to learn positions, never to widen what a
//! connection may see (audiences the connection does not have are ignored).
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_backplane::Position;
use herald_domain::Audience;

/// Positions per audience, in the order first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    entries: Vec<(Audience, Position)>,
}

/// Longest cursor accepted (a cursor names a handful of audiences).
const MAX_LEN: usize = 2048;

impl Cursor {
    /// An empty cursor with room for `n` audiences.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            entries: Vec::with_capacity(n),
        }
    }

    pub fn get(&self, audience: Audience) -> Option<Position> {
        self.entries
            .iter()
            .find(|(a, _)| *a == audience)
            .map(|(_, p)| *p)
    }

    pub fn set(&mut self, audience: Audience, position: Position) {
        match self.entries.iter_mut().find(|(a, _)| *a == audience) {
            Some(e) => e.1 = position,
            None => self.entries.push((audience, position)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(32 * self.entries.len());
        for (i, (a, p)) in self.entries.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&a.to_string());
            text.push('=');
            text.push_str(&p.to_string());
        }
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Decodes a cursor; the error is a short reason for the client. An empty string is an
    /// empty cursor.
    pub fn decode(s: &str) -> Result<Cursor, String> {
        let s = s.trim();
        let bad = || "invalid cursor".to_owned();
        if s.len() > MAX_LEN {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut cursor = Cursor::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (a, p) = part.split_once('=').ok_or_else(bad)?;
            let audience = Audience::parse(a).map_err(|_| bad())?;
            let position: Position = p.parse().map_err(|_| bad())?;
            cursor.set(audience, position);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::KeyId;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut c = Cursor::default();
        let k = Audience::Key(KeyId::new(42).unwrap());
        c.set(
            k,
            Position {
                ms: 1_700_000_000_000,
                seq: 0,
            },
        );
        c.set(Audience::Global, Position { ms: 5, seq: 1 });
        c.set(
            k,
            Position {
                ms: 1_700_000_000_001,
                seq: 2,
            },
        );
        let s = c.encode();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let back = Cursor::decode(&s).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.get(k),
            Some(Position {
                ms: 1_700_000_000_001,
                seq: 2
            })
        );
        assert_eq!(Cursor::decode("").unwrap(), Cursor::default());
        assert!(Cursor::decode("!!!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("room=1-0")).is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("vkey:1=x")).is_err());
        assert!(Cursor::decode(&"A".repeat(5000)).is_err());
    }
}
