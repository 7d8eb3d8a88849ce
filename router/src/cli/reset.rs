//! `weave-router reset`: removes what the router made on this host — the fast datapath's
//! devices or Open vSwitch datapath (and with them their forwarding entries and flows),
//! the TAP and the `weave` bridge — and nothing else. The IPAM store is data, not plumbing, and stays unless asked.
//!
//! It refuses while a router answers on the HTTP API: a running router would only make it
//! all again.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::http::{self, ClientError};
use crate::cli::{CliError, DEFAULT_HTTP_ADDR};
use crate::dataplane::plumbing::{self, HostPlumbing};
use crate::fastdp::vxlan;

/// Flags of `weave-router reset`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResetArgs {
    /// Address of the router's HTTP API, checked to make sure no router runs.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Also delete the IPAM store in this directory (the router's `--db-dir`): this
    /// peer's addresses are forgotten; reclaim them on another peer first.
    #[arg(long)]
    pub remove_store: Option<PathBuf>,
}

/// Removes the router's devices (and the store when asked); prints what it removed.
pub fn reset(args: &ResetArgs, out: &mut impl Write) -> Result<(), CliError> {
    match http::request(args.http_addr, "GET", "/status", &[], &[]) {
        Err(ClientError::Unreachable { .. }) => {}
        _ => {
            return Err(CliError::Reset(format!(
                "a router answers at {}; stop it before resetting",
                args.http_addr
            )))
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CliError::Reset(format!("cannot start a runtime: {e}")))?;
    let removed = runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CliError::Reset(format!("cannot open a netlink connection: {e}")))?;
        let driver = tokio::spawn(connection);
        let mut removed = crate::fastdp::ovs::remove(&handle).await;
        removed.extend(
            vxlan::remove(&handle)
                .await
                .map_err(|e| CliError::Reset(e.to_string()))?,
        );
        // The bridge's MTU is irrelevant to removing it.
        let desired = HostPlumbing::new(1500);
        removed.extend(
            plumbing::remove(&handle, &desired)
                .await
                .map_err(|e| CliError::Reset(e.to_string()))?,
        );
        driver.abort();
        Ok::<_, CliError>(removed)
    })?;
    for name in &removed {
        writeln!(out, "removed {name}")?;
    }
    if let Some(dir) = &args.remove_store {
        let store = dir.join(crate::ipam::store::FILE_NAME);
        match std::fs::remove_file(&store) {
            Ok(()) => writeln!(out, "removed {}", store.display())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::Reset(format!(
                    "cannot remove {}: {e}",
                    store.display()
                )))
            }
        }
    }
    if removed.is_empty() && args.remove_store.is_none() {
        writeln!(out, "nothing to remove")?;
    }
    Ok(())
}
