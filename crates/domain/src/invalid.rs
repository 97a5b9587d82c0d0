//! The one error of the domain: a value from outside that was refused.

/// Why a value from outside was refused. The text is short and names the field; it ends up in
/// the `x-herald-reason` header of a dead-lettered message or in a client error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The most of a reason kept: a reason may quote outside input (a 100k-digit number, a 20 KB
/// name), and it is logged, put in AMQP headers and sent to clients.
pub const MAX_REASON: usize = 300;
/// The most of one piece of outside input a reason quotes.
pub const MAX_ECHO: usize = 64;

impl Invalid {
    pub fn new(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            reason.truncate(floor_char_boundary(&reason, MAX_REASON));
            reason.push('…');
        }
        Self(reason)
    }
}

/// At most `MAX_ECHO` bytes of `s` (cut on a character boundary), marked when cut: what an
/// error message may quote of outside input.
pub fn prefix(s: &str) -> std::borrow::Cow<'_, str> {
    bounded(s, MAX_ECHO)
}

/// At most `max` bytes of `s`, cut on a character boundary and marked with how long it was.
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        s.into()
    } else {
        format!("{}… ({} bytes)", &s[..floor_char_boundary(s, max)], s.len()).into()
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_echoes_are_bounded_on_character_boundaries() {
        let r = Invalid::new("é".repeat(1000));
        assert!(r.0.len() <= MAX_REASON + '…'.len_utf8());
        assert_eq!(prefix("short"), "short");
        let long = "é".repeat(100);
        let p = prefix(&long);
        assert!(
            p.starts_with(&"é".repeat(32)) && p.ends_with("(200 bytes)"),
            "{p}"
        );
    }
}
