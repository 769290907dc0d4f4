//! A minimal HTTP/1.1 keep-alive client over a loopback `TcpStream`: enough for a load
//! generator (Content-Length and chunked responses), nothing more. Loopback only.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body we read (a page of 1000 events is ~1 MB).
const MAX_BODY: usize = 256 << 20;

/// Resolves `host:port` or `http://host:port[/]` and refuses anything not on loopback.
pub fn loopback_target(target: &str) -> Result<SocketAddr> {
    let t = target.trim_start_matches("http://").trim_end_matches('/');
    let addr = t
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {t}"))?
        .next()
        .ok_or_else(|| anyhow!("{t} resolves to nothing"))?;
    let ip = addr.ip();
    let loopback = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !loopback {
        bail!("refusing non-loopback target {addr}: this tool only loads the local machine");
    }
    Ok(addr)
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server asked to close the connection.
    pub close: bool,
}

pub struct Conn {
    addr: SocketAddr,
    host: String,
    auth: Option<String>,
    stream: Option<BufReader<TcpStream>>,
    pub timeout: Duration,
}

impl Conn {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Self {
        Conn {
            addr,
            host: addr.to_string(),
            auth: token.map(|t| format!("Bearer {t}")),
            stream: None,
            timeout: Duration::from_secs(30),
        }
    }

    async fn stream(&mut self) -> Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let s = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
                .await
                .map_err(|_| anyhow!("connect timed out"))??;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::with_capacity(64 << 10, s));
        }
        self.stream.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// One request; on any I/O error the connection is dropped and the error returned (the
    /// caller decides whether to retry: a non-idempotent request might have been applied).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        // One buffer for head and (small) body: one write, no formatting machinery.
        let small = body.len() < 16 << 10;
        let mut head = Vec::with_capacity(256 + if small { body.len() } else { 0 });
        for part in [method, " ", path, " HTTP/1.1\r\nHost: ", &self.host, "\r\n"] {
            head.extend_from_slice(part.as_bytes());
        }
        if let Some(a) = &self.auth {
            head.extend_from_slice(b"Authorization: ");
            head.extend_from_slice(a.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = content_type {
            head.extend_from_slice(b"Content-Type: ");
            head.extend_from_slice(ct.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == "POST" {
            head.extend_from_slice(b"Content-Length: ");
            head.extend_from_slice(body.len().to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let timeout = self.timeout;
        let res = tokio::time::timeout(timeout, async {
            let s = self.stream().await?;
            // One write for small requests (the common case), two for big bodies.
            if small {
                head.extend_from_slice(body);
                s.get_mut().write_all(&head).await?;
            } else {
                s.get_mut().write_all(&head).await?;
                s.get_mut().write_all(body).await?;
            }
            read_response(s).await
        })
        .await;
        match res {
            Ok(Ok(r)) => {
                if r.close {
                    self.stream = None;
                }
                Ok(r)
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(anyhow!("request timed out after {timeout:?}"))
            }
        }
    }

    /// Sends raw bytes and reads one response (for hostile requests). The connection is
    /// always dropped afterwards.
    pub async fn raw(&mut self, bytes: &[u8], half_close: bool) -> Result<Option<Response>> {
        let timeout = self.timeout;
        let res = tokio::time::timeout(timeout, async {
            let s = self.stream().await?;
            if let Err(e) = s.get_mut().write_all(bytes).await {
                // The server may answer (413) and close before reading everything.
                return match read_response(s).await {
                    Ok(r) => Ok(Some(r)),
                    Err(_) => Err(anyhow::Error::from(e)),
                };
            }
            if half_close {
                s.get_mut().shutdown().await?;
            }
            match read_response(s).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if is_eof(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
        self.stream = None;
        match res {
            Ok(r) => r,
            Err(_) => Err(anyhow!("raw request timed out after {timeout:?}")),
        }
    }
}

fn is_eof(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            )
        })
    })
}

async fn read_line(s: &mut BufReader<TcpStream>, line: &mut String) -> Result<()> {
    line.clear();
    let n = s.read_line(line).await?;
    if n == 0 {
        return Err(
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed").into(),
        );
    }
    if line.len() > 64 << 10 {
        bail!("header line too long");
    }
    Ok(())
}

async fn read_response(s: &mut BufReader<TcpStream>) -> Result<Response> {
    let mut line = String::new();
    read_line(s, &mut line).await?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for _ in 0..200 {
        read_line(s, &mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(s, &mut line).await?;
            let size_hex = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16).context("bad chunk size")?;
            if body.len() + size > MAX_BODY {
                bail!("response body too large");
            }
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    read_line(s, &mut line).await?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            s.read_exact(&mut body[start..]).await?;
            read_line(s, &mut line).await?;
        }
    } else if let Some(n) = content_length {
        if n > MAX_BODY {
            bail!("response body too large");
        }
        body.resize(n, 0);
        s.read_exact(&mut body).await?;
    } else if status >= 200 && status != 204 && status != 304 {
        // No length: the body runs to EOF.
        s.take(MAX_BODY as u64).read_to_end(&mut body).await?;
        close = true;
    }
    Ok(Response {
        status,
        body,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback() {
        assert!(loopback_target("127.0.0.1:8080").is_ok());
        assert!(loopback_target("http://127.0.0.1:8080/").is_ok());
        assert!(loopback_target("[::1]:8080").is_ok());
        assert!(loopback_target("10.0.0.1:80").is_err());
        assert!(loopback_target("8.8.8.8:53").is_err());
    }

    #[tokio::test]
    async fn reads_length_and_chunked_responses_on_one_connection() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap();
        });
        let mut c = Conn::new(addr, Some("t"));
        let r = c
            .request("POST", "/x", Some("application/json"), b"{}")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"hello"[..]));
        let r = c.request("GET", "/y", None, b"").await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
    }
}
