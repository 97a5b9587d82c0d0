//! Reading Conduit's JSON bodies: a case-insensitive view of an object's fields, times in RFC 3339,
//! and the camelCase policy .NET writes. Shared by every payload type's `parse`.
use crate::invalid::Invalid;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Longest free text (ids, names, aliases) taken from an event.
pub(crate) const MAX_TEXT: usize = 200;

/// Case-insensitive view of a JSON object's fields: Conduit's publishers write PascalCase or
/// camelCase. A JSON `null` counts as absent.
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn of(v: &'a Value) -> Result<Self, Invalid> {
        v.as_object()
            .map(Self)
            .ok_or_else(|| Invalid::new("message body must be a JSON object"))
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        let found = match self.0.get(name) {
            Some(v) => Some(v),
            None => self
                .0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v),
        };
        found.filter(|v| !v.is_null())
    }

    pub fn required(&self, name: &str) -> Result<&'a Value, Invalid> {
        self.get(name)
            .ok_or_else(|| Invalid::new(format!("missing field {name}")))
    }

    pub fn required_any(&self, names: &[&str]) -> Result<&'a Value, Invalid> {
        names
            .iter()
            .find_map(|n| self.get(n))
            .ok_or_else(|| Invalid::new(format!("missing field {}", names.join(" or "))))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(Invalid::new(format!("{name} must be a string"))),
        }
    }

    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, Invalid> {
        self.string(name)?.map(|s| parse_time(name, &s)).transpose()
    }
}

/// RFC 3339, with or without offset (.NET writes `2024-01-01T00:00:00` for unspecified kind;
/// Herald takes that as UTC).
pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, Invalid> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .map_err(|_| {
            Invalid::new(format!(
                "{field} is not an RFC 3339 time: {:?}",
                crate::invalid::prefix(s)
            ))
        })
}

pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub(crate) fn text(field: &str, v: Option<String>) -> Result<Option<String>, Invalid> {
    match v {
        Some(s) if s.trim().is_empty() => Err(Invalid::new(format!("{field} is empty"))),
        Some(s) if s.len() > MAX_TEXT => Err(Invalid::new(format!(
            "{field} longer than {MAX_TEXT} bytes"
        ))),
        other => Ok(other),
    }
}

pub(crate) fn boolean(f: &Fields<'_>, name: &str) -> Result<Option<bool>, Invalid> {
    match f.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Invalid::new(format!("{name} must be true or false"))),
    }
}

/// `TaskId` → `taskId`, recursively, as .NET's camelCase policy writes them.
pub fn camel_case(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (lower_first(k), camel_case(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel_case).collect()),
        other => other.clone(),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(crate) fn object(body: &Value) -> Map<String, Value> {
    match camel_case(body) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_without_offset_are_utc() {
        assert_eq!(
            format_time(parse_time("t", "2026-01-02T03:04:05.5").unwrap()),
            "2026-01-02T03:04:05.500Z"
        );
        assert!(parse_time("t", "yesterday").is_err());
    }
}
