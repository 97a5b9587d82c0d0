//! The long-polling transport, for measuring it against WebSockets (docs/benchmarks.md, "Long
//! polling"): negotiate, a first poll that starts the connection, the handshake in a POST, then
//! polls back to back on one keep-alive HTTP connection while pings go in POSTs on another.
use crate::error::Error;
use crate::http::{Http, authority, json_string_field};
use herald_signalr_client::codec;
use std::time::Duration;

/// A started long-polling connection.
pub struct LongPoll {
    polls: Http,
    sends: Http,
    /// `{path}?id=…[&cursor=…]`
    target: String,
    token: String,
}

/// `path` is the hub's, `token` the credential.
pub async fn connect(
    path: &str,
    token: &str,
    base: &str,
    cursor: Option<&str>,
) -> Result<LongPoll, Error> {
    let host = authority(base)?;
    let mut sends = Http::new(host.clone());
    let r = sends
        .post(
            &format!("{}/negotiate?negotiateVersion=1", path),
            Some(token),
            "",
        )
        .await?;
    if r.status != 200 {
        return Err(format!("negotiate answered {}", r.status).into());
    }
    let id =
        json_string_field(&r.body, "connectionToken").ok_or("negotiate: no connectionToken")?;
    let mut target = format!("{}?id={id}", path);
    if let Some(c) = cursor {
        target.push_str("&cursor=");
        target.push_str(c);
    }
    let mut polls = Http::new(host);
    let first = polls.request("GET", &target, Some(token), "").await?;
    if first.status != 200 {
        return Err(format!("first poll answered {}", first.status).into());
    }
    let r = sends
        .request("POST", &target, Some(token), codec::HANDSHAKE_JSON)
        .await?;
    if r.status != 200 {
        return Err(format!("handshake POST answered {}", r.status).into());
    }
    Ok(LongPoll {
        polls,
        sends,
        target,
        token: token.to_owned(),
    })
}

/// Polls until the server ends the connection (204) or an error, handing each answer's
/// records to `records`; pings every 15 s meanwhile.
pub async fn session(
    lp: LongPoll,
    mut records: impl FnMut(&str) -> Result<(), Error>,
) -> Result<(), Error> {
    let LongPoll {
        mut polls,
        mut sends,
        target,
        token,
    } = lp;
    let pinger = {
        let (target, token) = (target.clone(), token.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            tick.tick().await;
            loop {
                tick.tick().await;
                match sends
                    .request("POST", &target, Some(&token), codec::PING)
                    .await
                {
                    Ok(r) if r.status == 200 => {}
                    _ => return,
                }
            }
        })
    };
    let mut handshaken = false;
    let result = loop {
        let r = match polls.request("GET", &target, Some(&token), "").await {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        match r.status {
            200 if r.body.is_empty() => {}
            200 => {
                let mut body = r.body.as_str();
                if !handshaken {
                    body = match codec::split_handshake(body) {
                        Ok(rest) => rest,
                        Err(e) => break Err(e.into()),
                    };
                    handshaken = true;
                }
                if let Err(e) = records(body) {
                    break Err(e);
                }
            }
            204 => break Ok(()),
            s => break Err(format!("poll answered {s}").into()),
        }
    };
    pinger.abort();
    result
}
