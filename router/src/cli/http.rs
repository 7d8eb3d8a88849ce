//! A minimal blocking HTTP/1.1 client for the local control API: one request per
//! connection (`Connection: close`), enough to talk to our own server or Weave's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long to wait to connect, and for each read or write.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The router's API could not be reached at all.
    #[error("cannot reach weave-router at {addr}: {reason} (is it running?)")]
    Unreachable {
        /// The API address.
        addr: SocketAddr,
        /// What the connect call said.
        reason: String,
    },
    /// The connection broke during the exchange.
    #[error("talking to weave-router at {addr}: {reason}")]
    Io {
        /// The API address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The answer is not HTTP as we know it.
    #[error("bad HTTP response from {addr}: {reason}")]
    BadResponse {
        /// The API address.
        addr: SocketAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// The router answered with an error status.
    #[error("weave-router at {addr} answered {status}: {message}")]
    Refused {
        /// The API address.
        addr: SocketAddr,
        /// The status code.
        status: u16,
        /// The body, trimmed.
        message: String,
    },
}

/// `GET path`; a non-2xx answer is an error.
pub fn get(addr: SocketAddr, path: &str, accept: &str) -> Result<Response, ClientError> {
    request(addr, "GET", path, &[("Accept", accept)], b"")
}

/// `POST path` with a form body; a non-2xx answer is an error.
pub fn post_form(addr: SocketAddr, path: &str, body: &str) -> Result<Response, ClientError> {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}

/// Sends one request and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, ClientError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| ClientError::Unreachable {
            addr,
            reason: io_reason(&e),
        })?;
    let io_err = |e: io::Error| ClientError::Io {
        addr,
        reason: io_reason(&e),
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;

    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: weave-router\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(io_err)?;
    stream.write_all(body).map_err(io_err)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_err)?;
    let resp = parse_response(&raw).map_err(|reason| ClientError::BadResponse { addr, reason })?;
    if !(200..300).contains(&resp.status) {
        return Err(ClientError::Refused {
            addr,
            status: resp.status,
            message: String::from_utf8_lossy(&resp.body).trim().to_string(),
        });
    }
    Ok(resp)
}

/// Parses a complete HTTP/1.1 response (the server closed the connection after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;

    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }

    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("body cut short: {} of {n} bytes", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunk size line cut short")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("chunk cut short")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("chunk end cut short")?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An I/O error as a short phrase: "connection refused" rather than
/// "Connection refused (os error 111)".
pub fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = parse_response(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (400, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn refused_connection_says_so() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = get(addr, "/status", "text/plain").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach weave-router at {addr}: connection refused (is it running?)")
        );
    }
}
