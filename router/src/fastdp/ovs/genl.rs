//! A generic netlink socket (from the `netlink-sys` crate) that sends [`Request`]s and
//! collects the answers: acknowledgements, errors and dumps.

use std::io;

use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::msg::{self, MsgError, Reply, Request, F_ACK, F_DUMP};

/// Receive buffer: an upcall carries a whole frame, up to 64 KiB.
const RECV_BUF: usize = 128 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    /// The socket failed.
    #[error("generic netlink: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request.
    #[error("{what}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The request.
        what: String,
        /// The errno (positive).
        errno: i32,
    },
    /// The kernel's answer did not parse.
    #[error("{what}: {source}")]
    Msg {
        /// The request.
        what: String,
        /// The parse error.
        source: MsgError,
    },
}

impl GenlError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            GenlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A generic netlink socket bound to its own port.
pub struct Genl {
    sock: Socket,
    pid: u32,
    seq: u32,
}

impl Genl {
    /// Opens a socket and binds it to a port the kernel picks.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        let addr = sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_rx_buf_sz(1 << 20)?;
        Ok(Genl {
            sock,
            pid: addr.port_number(),
            seq: 0,
        })
    }

    /// The socket's netlink port: where upcalls sent to it arrive.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves a family's id by name.
    pub fn family(&mut self, name: &str) -> Result<u16, GenlError> {
        let what = format!("resolve generic netlink family {name}");
        let replies = self.request(&msg::get_family(name), &what)?;
        let payload = replies.first().ok_or_else(|| GenlError::Msg {
            what: what.clone(),
            source: MsgError::Missing("family"),
        })?;
        msg::family_id(payload).map_err(|source| GenlError::Msg { what, source })
    }

    /// Sends `req` and returns the payload of every message answering it, after the
    /// kernel's acknowledgement or the end of a dump.
    pub fn request(&mut self, req: &Request, what: &str) -> Result<Vec<Vec<u8>>, GenlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = req.clone();
        let dump = req.flags & F_DUMP == F_DUMP;
        if !dump {
            req.flags |= F_ACK;
        }
        self.sock.send(&req.encode(seq), 0)?;
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            self.sock.recv(&mut buf, 0)?;
            let replies = msg::parse_replies(&buf).map_err(|source| GenlError::Msg {
                what: what.to_string(),
                source,
            })?;
            for r in replies {
                match r {
                    Reply::Msg {
                        seq: s, payload, ..
                    } if s == seq => out.push(payload.to_vec()),
                    Reply::Ack { seq: s, errno } if s == seq => {
                        if errno != 0 {
                            return Err(GenlError::Kernel {
                                what: what.to_string(),
                                errno: -errno,
                            });
                        }
                        if !dump {
                            return Ok(out);
                        }
                    }
                    Reply::Done { seq: s } if s == seq => return Ok(out),
                    // Late answers to an earlier request.
                    _ => {}
                }
            }
        }
    }

    /// Waits for upcalls and returns the payloads of the misses among them.
    pub fn recv_misses(&self) -> Result<Vec<Vec<u8>>, GenlError> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        self.sock.recv(&mut buf, 0)?;
        let replies = msg::parse_replies(&buf).map_err(|source| GenlError::Msg {
            what: "read an upcall".to_string(),
            source,
        })?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                Reply::Msg { cmd, payload, .. } if cmd == msg::PACKET_CMD_MISS => {
                    Some(payload.to_vec())
                }
                _ => None,
            })
            .collect())
    }
}
