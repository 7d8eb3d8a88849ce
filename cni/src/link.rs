//! The netlink side of ADD, DEL and CHECK: the veth pair, its bridge port, and the pod end's
//! name, address and routes inside the pod's network namespace.
//!
//! A netlink socket belongs to the network namespace it was opened in, so [`in_netns`] opens
//! one from a short-lived thread that has entered the pod's namespace; the process itself
//! never changes namespace.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A netlink failure: what was being done, and the error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NlError {
    /// The operation, naming the interface.
    pub what: String,
    /// The netlink error.
    #[source]
    pub source: rtnetlink::Error,
}

/// What is looked at in a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
    /// The bridge (or other controller) it is a port of.
    pub master: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Its MAC address, `aa:bb:..`.
    pub mac: String,
}

/// A handle in the current network namespace.
pub fn here() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A handle in the network namespace `ns` (an open `/proc/PID/ns/net` or `/run/netns/NAME`).
pub fn in_netns(ns: &File) -> io::Result<Handle> {
    // The socket registers with the runtime's reactor when it is made: the thread enters it.
    let runtime = tokio::runtime::Handle::current();
    let opened = std::thread::scope(|s| {
        s.spawn(|| {
            let _entered = runtime.enter();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            rtnetlink::new_connection()
        })
        .join()
    });
    let (conn, handle, _) = opened.map_err(|_| io::Error::other("netns thread panicked"))??;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link called `name`, if there is one.
pub async fn find(handle: &Handle, name: &str) -> Result<Option<Link>, NlError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(message) => Ok(message.as_ref().map(link_from)),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(source) => Err(NlError {
            what: format!("look up link {name}"),
            source,
        }),
    }
}

/// Creates the veth pair `host`/`peer` with `mtu`.
pub async fn create_veth(handle: &Handle, host: &str, peer: &str, mtu: u32) -> Result<(), NlError> {
    let message = LinkVeth::new(host, peer).mtu(mtu).build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(nl(format!("create veth pair {host}/{peer}")))
}

/// Makes `index` a port of `bridge`, with hairpin mode as asked, and brings it up.
pub async fn attach(
    handle: &Handle,
    index: u32,
    bridge: u32,
    hairpin: bool,
) -> Result<(), NlError> {
    let what = format!("attach link {index} to bridge {bridge}");
    let msg = LinkUnspec::new_with_index(index).controller(bridge).build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(nl(what.clone()))?;
    let msg = LinkBridgePort::new(index).hairpin(hairpin).build();
    handle
        .link()
        .set_port(msg)
        .execute()
        .await
        .map_err(nl(format!("set hairpin {hairpin} on link {index}")))?;
    let msg = LinkUnspec::new_with_index(index).up().build();
    handle.link().change(msg).execute().await.map_err(nl(what))
}

/// Moves `index` into the network namespace `ns`.
pub async fn move_to(handle: &Handle, index: u32, ns: &File) -> Result<(), NlError> {
    let msg = LinkUnspec::new_with_index(index)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(nl(format!("move link {index} into the pod's netns")))
}

/// Renames `index` to `name`, gives it `addr/plen` and brings it (and `lo`) up.
pub async fn configure(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: Ipv4Addr,
    plen: u8,
) -> Result<(), NlError> {
    let msg = LinkUnspec::new_with_index(index).name(name).build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(nl(format!("rename link {index} to {name}")))?;
    handle
        .address()
        .add(index, IpAddr::V4(addr), plen)
        .execute()
        .await
        .map_err(nl(format!("add {addr}/{plen} to {name}")))?;
    let msg = LinkUnspec::new_with_index(index).up().build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(nl(format!("bring {name} up")))?;
    if let Some(lo) = find(handle, "lo").await? {
        let msg = LinkUnspec::new_with_index(lo.index).up().build();
        handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl("bring lo up".into()))?;
    }
    Ok(())
}

/// Adds the route to `dst/plen` through `index`, via `gw` or on the link.
pub async fn add_route(
    handle: &Handle,
    index: u32,
    dst: Ipv4Addr,
    plen: u8,
    gw: Option<Ipv4Addr>,
) -> Result<(), NlError> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, plen)
        .output_interface(index);
    b = match gw {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    handle
        .route()
        .add(b.build())
        .execute()
        .await
        .map_err(nl(format!("add route {dst}/{plen} via {gw:?}")))
}

/// Deletes the link `name`; false when there was none.
pub async fn delete(handle: &Handle, name: &str) -> Result<bool, NlError> {
    let Some(link) = find(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        // Deleting one end of a pair takes the other with it; a racing DEL may get there first.
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
        Err(source) => Err(NlError {
            what: format!("delete link {name}"),
            source,
        }),
    }
}

/// IPv4 addresses of `index`, with their prefix lengths.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NlError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("list addresses of link {index}")))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

/// Adds `addr/plen` to the link `index` unless it is there (a racing ADD may have added it).
pub async fn ensure_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    plen: u8,
) -> Result<(), NlError> {
    let result = handle
        .address()
        .add(index, IpAddr::V4(addr), plen)
        .execute()
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        Err(source) => Err(NlError {
            what: format!("add {addr}/{plen} to link {index}"),
            source,
        }),
    }
}

/// The gateway of the IPv4 default route through `index`, if there is one.
pub async fn default_gateway(handle: &Handle, index: u32) -> Result<Option<Ipv4Addr>, NlError> {
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes".into()))?;
    Ok(routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .filter(|r| {
            r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
        })
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                _ => None,
            })
        }))
}

/// Whether `e` is the kernel's answer `errno`.
fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

fn nl(what: String) -> impl FnOnce(rtnetlink::Error) -> NlError {
    move |source| NlError { what, source }
}

fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        mtu: 0,
        master: None,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: String::new(),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
            LinkAttribute::Address(a) => {
                link.mac = a
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            _ => {}
        }
    }
    link
}
