//! Stream entries and channel messages back into deliveries, decoded once per node.
use crate::delivery::Delivery;
use crate::position::Position;
use herald_domain::{Audience, OutboundEvent};
use redis::Value;
use std::sync::Arc;

/// `[id, [field, value, ...]]` → the delivery and the id of the entry written before it.
pub(crate) fn parse_entry(audience: Audience, item: Value) -> Option<(Delivery, Option<Position>)> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = text(parts.pop()?)?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let field = |name: &str| {
        fields.chunks(2).find_map(|kv| match kv {
            [k, v] if text(k.clone()).as_deref() == Some(name) => text(v.clone()),
            _ => None,
        })
    };
    let prev = field("p").and_then(|p| p.parse().ok());
    Some((decode(audience, &id, &field("e")?)?, prev))
}

pub(crate) fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

pub(crate) fn decode(audience: Audience, id: &str, data: &str) -> Option<Delivery> {
    let position = id.parse().ok()?;
    match serde_json::from_str::<OutboundEvent>(data) {
        Ok(mut ev) => {
            ev.fill_in_task();
            Some(Delivery {
                audience,
                position,
                event: Arc::new(ev),
            })
        }
        Err(e) => {
            tracing::warn!(%audience, %id, error = %e, "skipping undecodable backplane entry");
            None
        }
    }
}
