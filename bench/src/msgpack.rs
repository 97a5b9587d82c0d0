//! The SignalR MessagePack hub protocol as the load generator reads it (`--hub-protocol
//! messagepack`): VarInt-prefixed messages in binary frames; Invocations are accounted like
//! JSON records, by their object's `eventId`, `requestId` and `cursor`.
use crate::error::Error;
use rmpv::Value as Mp;

/// An Invocation's `eventId`, `requestId` and `cursor`.
pub(crate) type Fields<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// Walks the MessagePack messages of one binary frame (each with its VarInt length prefix):
/// `event` gets each Invocation's fields, or `None` for another message that is not a Ping;
/// `Err` when the server sent Close.
pub(crate) fn messages(
    frame: &[u8],
    mut event: impl FnMut(Option<Fields<'_>>),
) -> Result<(), Error> {
    let mut rest = frame;
    while !rest.is_empty() {
        let mut len = 0usize;
        let mut at = 0;
        loop {
            let b = *rest.get(at).ok_or("truncated length prefix")?;
            len |= usize::from(b & 0x7f) << (7 * at);
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
            if at >= 5 {
                return Err("length prefix too long".into());
            }
        }
        let message = rest.get(at..at + len).ok_or("truncated message")?;
        rest = &rest[at + len..];
        let mut rd = message;
        let Mp::Array(items) = rmpv::decode::read_value(&mut rd).map_err(|e| e.to_string())? else {
            return Err("a message is not an array".into());
        };
        match items.first().and_then(Mp::as_u64) {
            Some(6) => {}
            Some(7) => return Err(format!("server closed: {items:?}").into()),
            Some(1) => {
                let field = |k: &str| match items.get(4) {
                    Some(Mp::Array(args)) => match args.first() {
                        Some(Mp::Map(m)) => m
                            .iter()
                            .find(|(key, _)| key.as_str() == Some(k))
                            .and_then(|(_, v)| v.as_str()),
                        _ => None,
                    },
                    _ => None,
                };
                event(Some((
                    field("eventId"),
                    field("requestId"),
                    field("cursor"),
                )));
            }
            _ => event(None),
        }
    }
    Ok(())
}
