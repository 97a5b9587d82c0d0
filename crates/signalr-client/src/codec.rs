//! The SignalR JSON hub protocol's framing: each record is a JSON text followed by the record
//! separator 0x1E; a WebSocket frame carries one or more whole records.

/// Ends every record.
pub const RS: char = '\u{1e}';

/// The handshake request for the JSON protocol, version 1.
pub const HANDSHAKE_JSON: &str = "{\"protocol\":\"json\",\"version\":1}\u{1e}";

/// A Ping record.
pub const PING: &str = "{\"type\":6}\u{1e}";

/// A handshake request for any protocol and version (to test refusals).
pub fn handshake(protocol: &str, version: u32) -> String {
    format!("{{\"protocol\":\"{protocol}\",\"version\":{version}}}{RS}")
}

/// An Invocation record of `target` with `arguments` (a JSON array); with an id, the server
/// answers with a Completion.
pub fn invocation(id: Option<&str>, target: &str, arguments: &serde_json::Value) -> String {
    let mut msg = serde_json::json!({"type": 1, "target": target, "arguments": arguments});
    if let Some(id) = id {
        msg["invocationId"] = serde_json::Value::String(id.to_owned());
    }
    format!("{msg}{RS}")
}

/// The records of one frame, without their separators.
pub fn records(frame: &str) -> impl Iterator<Item = &str> {
    frame.split_terminator(RS).filter(|r| !r.is_empty())
}

/// Splits the server's first frame into the handshake answer and the records that came with it;
/// `Err` with the answer when it is not the empty object (a refusal names its error).
pub fn split_handshake(frame: &str) -> Result<&str, String> {
    let (answer, rest) = frame
        .split_once(RS)
        .ok_or_else(|| format!("handshake answer without a record separator: {frame:?}"))?;
    if answer.trim() == "{}" {
        Ok(rest)
    } else {
        Err(format!("handshake refused: {answer}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_records_and_the_handshake_answer() {
        let frame = "{}\u{1e}{\"type\":6}\u{1e}{\"type\":1}\u{1e}";
        assert_eq!(
            split_handshake(frame),
            Ok("{\"type\":6}\u{1e}{\"type\":1}\u{1e}")
        );
        assert_eq!(
            records("{\"type\":6}\u{1e}{\"type\":1}\u{1e}").collect::<Vec<_>>(),
            ["{\"type\":6}", "{\"type\":1}"]
        );
        assert!(split_handshake("{\"error\":\"no\"}\u{1e}").is_err());
        assert!(split_handshake("{}").is_err());
        assert_eq!(handshake("json", 1), HANDSHAKE_JSON);
        let inv = invocation(Some("1"), "Resume", &serde_json::json!(["c"]));
        let v: serde_json::Value =
            serde_json::from_str(inv.trim_end_matches(RS)).expect("valid JSON");
        assert_eq!(v["invocationId"], "1");
        assert_eq!(v["target"], "Resume");
    }
}
