//! The few calls the plugin makes to the router's HTTP API on loopback.
//!
//! Written over `std::net` rather than with an HTTP client crate: the plugin is a short-lived
//! process making one or two plain HTTP/1.1 requests (`Connection: close`, no TLS, no
//! redirects, no chunked bodies from the router's answers that are read here) to one loopback
//! address, and a client crate would bring an async runtime or TLS stack for nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting to the router may take: it is on loopback, so a slow connect means it
/// is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an allocation may wait for the ring (the router's own bound is the `timeout`
/// parameter; this is that plus a margin).
pub const ALLOCATE_WAIT_SECS: u64 = 120;

/// An answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl Answer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The router's API at one address.
#[derive(Debug, Clone, Copy)]
pub struct RouterApi {
    addr: SocketAddr,
}

impl RouterApi {
    /// The API at `addr`.
    pub fn new(addr: SocketAddr) -> RouterApi {
        RouterApi { addr }
    }

    /// `POST /ip/{id}` (or `/ip/{id}/{subnet}`): the container's address, as `a.b.c.d/n`.
    pub fn allocate(
        &self,
        id: &str,
        subnet: Option<(std::net::Ipv4Addr, u8)>,
    ) -> io::Result<Answer> {
        let path = match subnet {
            Some((ip, plen)) => format!("/ip/{id}/{ip}/{plen}?timeout={ALLOCATE_WAIT_SECS}"),
            None => format!("/ip/{id}?timeout={ALLOCATE_WAIT_SECS}"),
        };
        self.request("POST", &path, Duration::from_secs(ALLOCATE_WAIT_SECS + 10))
    }

    /// `GET /ip/{id}`: the container's addresses, space separated.
    pub fn lookup(&self, id: &str) -> io::Result<Answer> {
        self.request("GET", &format!("/ip/{id}"), Duration::from_secs(10))
    }

    /// `DELETE /ip/{id}`: releases every address of the container.
    pub fn release(&self, id: &str) -> io::Result<Answer> {
        self.request("DELETE", &format!("/ip/{id}"), Duration::from_secs(10))
    }

    /// `GET /ip`: every allocation of this router, as JSON.
    pub fn list(&self) -> io::Result<Answer> {
        self.request("GET", "/ip", Duration::from_secs(10))
    }

    /// `GET /report`: the router's state as JSON (IPAM's under `IPAM`).
    pub fn report(&self) -> io::Result<Answer> {
        self.request("GET", "/report", Duration::from_secs(10))
    }

    /// `GET /ring?timeout=1`: starts consensus if it has not started, waiting a second for it.
    pub fn prime(&self) -> io::Result<Answer> {
        self.request("GET", "/ring?timeout=1", Duration::from_secs(5))
    }

    fn request(&self, method: &str, path: &str, timeout: Duration) -> io::Result<Answer> {
        let mut stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_answer(&raw)
    }
}

fn parse_answer(raw: &[u8]) -> io::Result<Answer> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("router answered {what}"),
        )
    };
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(Answer {
        status,
        body: body.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a =
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n10.32.0.1/12\n").unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, "10.32.0.1/12");
        assert!(a.ok());
        assert!(parse_answer(b"garbage").is_err());
    }
}
