//! A TCP connection that starts with control lines: both ends read lines with a deadline,
//! polling a stop condition between short socket timeouts, then may go on with raw data
//! through the same buffered reader.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::proto::{self, MAX_LINE};

/// How long one blocking socket call may wait before stop flags and deadlines are checked.
pub(super) const POLL: Duration = Duration::from_millis(100);

/// A connection speaking control lines.
#[derive(Debug)]
pub(super) struct LineConn {
    /// Reads go through here (it may hold bytes that followed the last line).
    pub reader: BufReader<TcpStream>,
    /// Writes go here (the same socket).
    pub stream: TcpStream,
}

impl LineConn {
    /// Wraps a connected stream and sets its read timeout to [`POLL`].
    pub(super) fn new(stream: TcpStream) -> io::Result<LineConn> {
        stream.set_read_timeout(Some(POLL))?;
        let reader = BufReader::with_capacity(16 * 1024, stream.try_clone()?);
        Ok(LineConn { reader, stream })
    }

    /// Writes one control line.
    pub(super) fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.stream.write_all(&proto::encode_line(msg))
    }

    /// Reads one line: `Ok(None)` at end of stream before any byte, an error past `deadline`,
    /// when `stopped()` says so, or for a line over [`MAX_LINE`] bytes.
    pub(super) fn recv_line(
        &mut self,
        deadline: Instant,
        stopped: &dyn Fn() -> bool,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            let room = (MAX_LINE - line.len()) as u64;
            // read_until keeps what it consumed in `line` when it fails, so a timeout in the
            // middle of a line loses nothing.
            match (&mut self.reader).take(room).read_until(b'\n', &mut line) {
                Ok(0) if line.is_empty() => return Ok(None),
                Ok(_) if line.ends_with(b"\n") => return Ok(Some(line)),
                Ok(_) if line.len() >= MAX_LINE => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("control line longer than {MAX_LINE} bytes"),
                    ))
                }
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a control line",
                    ))
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
            if stopped() {
                return Err(io::Error::other("stopping"));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no control line before the deadline",
                ));
            }
        }
    }
}

/// Whether an error is a socket timeout (or an interrupted call), i.e. worth retrying.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
