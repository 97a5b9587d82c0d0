//! A minimal HTTP/1.1 client over one keep-alive TCP connection: enough for `POST /v1/keys`,
//! `POST /v1/events` and SignalR negotiate against a local server, without a client library.
use crate::error::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Http {
    host: String,
    conn: Option<BufReader<TcpStream>>,
}

pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `http://host:port/...` or `ws://host:port/...` → `host:port`.
pub fn authority(url: &str) -> Result<String, Error> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("not a URL: {url}"))?;
    Ok(rest.split('/').next().unwrap_or_default().to_owned())
}

impl Http {
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            conn: None,
        }
    }

    /// POSTs `body` (JSON) to `path`; reconnects once if the kept-alive connection went away.
    pub async fn post(
        &mut self,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> Result<Response, Error> {
        self.request("POST", path, bearer, body).await
    }

    /// Any method; reconnects once if the kept-alive connection went away.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> Result<Response, Error> {
        match self.try_request(method, path, bearer, body).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, bearer, body).await
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> Result<Response, Error> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.host).await?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        conn.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err("connection closed".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Err("connection closed in headers".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse()?;
                } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                    close = true;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err("chunked responses are not supported".into());
                }
            }
        }
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).await?;
        if close {
            self.conn = None;
        }
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The string value of `"field":"..."` in a JSON text (no escapes expected).
pub fn json_string_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    let pat = format!("\"{field}\":\"");
    let at = text.find(&pat)? + pat.len();
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}
