//! ADD, DEL, CHECK, GC and STATUS: what each does to the host, the pod and the router.
//!
//! ADD allocates first and attaches second; anything that fails after the address was given
//! undoes all of it (the veth pair is deleted, the address released) before the error is
//! returned, so a failed ADD leaves nothing behind. DEL never fails for something already
//! gone: a second DEL, a DEL whose netns is gone or a DEL while the router is down all
//! succeed (an address the router could not release then is collected by GC).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::{Command as Process, Stdio};

use rtnetlink::Handle;
use serde_json::Value;

use crate::config::{parse_cidr, Ipam, NetConf};
use crate::env::{Attachment, CniEnv};
use crate::link;
use crate::result::{ips_carry_version, AddResult, ErrorCode, Failure, Interface, IpConfig, Route};
use crate::router_api::RouterApi;

/// The IPAM identity of the bridge's own address, as in Weave Net.
pub const EXPOSE_IDENT: &str = "weave:expose";
/// Host ends of pod veths start with this ("veth" keeps desktop tools quiet, as in Weave).
pub const HOST_PREFIX: &str = "vethwepl";
/// Pod ends carry this name until they are renamed inside the pod.
const PEER_PREFIX: &str = "vethwepg";

/// An address and where it routes.
#[derive(Clone, Debug, PartialEq)]
struct Lease {
    addr: Ipv4Addr,
    plen: u8,
    gateway: Option<Ipv4Addr>,
    routes: Vec<Route>,
}

/// ADD: attaches the container and returns the result.
pub async fn add(env: &CniEnv, att: &Attachment, conf: &NetConf) -> Result<AddResult, Failure> {
    let ns = open_netns(att)?;
    let host = link::here().map_err(io_failure("open netlink"))?;
    let pod = link::in_netns(&ns).map_err(io_failure("open netlink in the pod's netns"))?;
    if link::find(&pod, &att.ifname)
        .await
        .map_err(nl_failure)?
        .is_some()
    {
        return Err(Failure::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_IFNAME: {} already exists in the pod", att.ifname),
            "",
        ));
    }
    let bridge = link::find(&host, &conf.bridge)
        .await
        .map_err(nl_failure)?
        .ok_or_else(|| {
            Failure::new(
                ErrorCode::TryAgainLater,
                format!("bridge {} not found", conf.bridge),
                "is weave-router running on this node?",
            )
        })?;
    let mut lease = allocate(env, att, conf).await?;
    let attached = attach(&host, &pod, &ns, att, conf, &bridge, &mut lease).await;
    match attached {
        Ok(interfaces) => Ok(result_of(conf, interfaces, lease)),
        Err(failure) => {
            let host_name = host_veth_name(&att.container_id, &att.ifname);
            if let Err(e) = link::delete(&host, &host_name).await {
                eprintln!("weave-cni: undoing ADD: {e}");
            }
            if let Err(e) = release(env, att, conf) {
                eprintln!("weave-cni: undoing ADD: {e}");
            }
            Err(failure)
        }
    }
}

/// DEL: removes the pod's interface and releases its address.
pub async fn del(env: &CniEnv, att: &Attachment, conf: &NetConf) -> Result<(), Failure> {
    if let Some(ns) = att.netns.as_deref().and_then(|p| File::open(p).ok()) {
        match link::in_netns(&ns) {
            Ok(pod) => {
                if let Err(e) = link::delete(&pod, &att.ifname).await {
                    eprintln!("weave-cni: {e}");
                }
            }
            Err(e) => eprintln!("weave-cni: netlink in {:?}: {e}", att.netns),
        }
    }
    // The host end goes with the pod end; this catches a pair whose pod end never moved.
    let host = link::here().map_err(io_failure("open netlink"))?;
    if let Err(e) = link::delete(&host, &host_veth_name(&att.container_id, &att.ifname)).await {
        eprintln!("weave-cni: {e}");
    }
    release(env, att, conf)
}

/// CHECK: verifies that what ADD made (per `prevResult`) is still there.
pub async fn check(att: &Attachment, conf: &NetConf) -> Result<(), Failure> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        Failure::new(
            ErrorCode::InvalidConfig,
            "prevResult: missing",
            "CHECK needs ADD's result",
        )
    })?;
    let (addr, plen) = prev["ips"][0]["address"]
        .as_str()
        .and_then(parse_cidr)
        .ok_or_else(|| Failure::new(ErrorCode::InvalidConfig, "prevResult.ips: no address", ""))?;
    let gateway: Option<Ipv4Addr> = prev["ips"][0]["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok());
    let ns = open_netns(att)?;
    let host = link::here().map_err(io_failure("open netlink"))?;
    let pod = link::in_netns(&ns).map_err(io_failure("open netlink in the pod's netns"))?;
    let failed = |msg: String| Failure::new(ErrorCode::CheckFailed, msg, "");
    let Some(iface) = link::find(&pod, &att.ifname).await.map_err(nl_failure)? else {
        return Err(failed(format!("{} is missing from the pod", att.ifname)));
    };
    if !iface.up {
        return Err(failed(format!("{} is down", att.ifname)));
    }
    let have = link::addresses(&pod, iface.index)
        .await
        .map_err(nl_failure)?;
    if !have.contains(&(addr, plen)) {
        return Err(failed(format!(
            "{} lacks {addr}/{plen} (has {have:?})",
            att.ifname
        )));
    }
    if let Some(gw) = gateway {
        let route = link::default_gateway(&pod, iface.index)
            .await
            .map_err(nl_failure)?;
        if route != Some(gw) {
            return Err(failed(format!("default route is via {route:?}, not {gw}")));
        }
    }
    let host_name = host_veth_name(&att.container_id, &att.ifname);
    let bridge = link::find(&host, &conf.bridge).await.map_err(nl_failure)?;
    let veth = link::find(&host, &host_name).await.map_err(nl_failure)?;
    match (bridge, veth) {
        (Some(b), Some(v)) if v.master == Some(b.index) => {}
        (_, None) => return Err(failed(format!("host end {host_name} is missing"))),
        _ => {
            return Err(failed(format!(
                "{host_name} is not on bridge {}",
                conf.bridge
            )))
        }
    }
    if let Ipam::Weave { .. } = conf.ipam {
        let answer = RouterApi::new(conf.router_api)
            .lookup(&att.container_id)
            .map_err(router_down)?;
        if !answer.ok()
            || !answer
                .body
                .split_whitespace()
                .any(|a| a == format!("{addr}/{plen}"))
        {
            return Err(failed(format!(
                "the router does not hold {addr}/{plen} for {} ({} {})",
                att.container_id, answer.status, answer.body
            )));
        }
    }
    Ok(())
}

/// GC: releases the addresses of containers that are not valid attachments.
pub fn gc(conf: &NetConf) -> Result<(), Failure> {
    let Ipam::Weave { .. } = conf.ipam else {
        return Ok(());
    };
    let valid: BTreeSet<&str> = conf
        .valid_attachments
        .iter()
        .map(|a| a.container_id.as_str())
        .collect();
    let api = RouterApi::new(conf.router_api);
    let answer = api.list().map_err(router_down)?;
    if !answer.ok() {
        return Err(refused("list allocations", &answer));
    }
    let list: Value = serde_json::from_str(&answer.body)
        .map_err(|e| Failure::new(ErrorCode::IoFailure, "router's allocation list", e))?;
    let owned = list["owned"].as_array().cloned().unwrap_or_default();
    for entry in owned {
        let Some(id) = entry["containerid"].as_str() else {
            continue;
        };
        if id.starts_with("weave:") || valid.contains(id) {
            continue;
        }
        let answer = api.release(id).map_err(router_down)?;
        if answer.ok() || answer.status == 404 {
            eprintln!("weave-cni: GC released the addresses of {id}");
        } else {
            return Err(refused(&format!("release {id}"), &answer));
        }
    }
    Ok(())
}

/// STATUS: is the router there, and can it allocate?
pub async fn status(conf: &NetConf) -> Result<(), Failure> {
    let unavailable =
        |msg: String, details: String| Failure::new(ErrorCode::PluginNotAvailable, msg, details);
    let host = link::here().map_err(io_failure("open netlink"))?;
    if link::find(&host, &conf.bridge)
        .await
        .map_err(nl_failure)?
        .is_none()
    {
        return Err(unavailable(
            format!("bridge {} not found", conf.bridge),
            "weave-router is not running on this node".into(),
        ));
    }
    let Ipam::Weave { .. } = conf.ipam else {
        return Ok(());
    };
    let api = RouterApi::new(conf.router_api);
    let answer = api
        .report()
        .map_err(|e| unavailable("weave-router's API is not reachable".into(), e.to_string()))?;
    let report: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let ipam = &report["IPAM"];
    if !answer.ok() || ipam.is_null() {
        return Err(unavailable(
            "weave-router does not allocate addresses (IPAM is off)".into(),
            format!(
                "{} {}",
                answer.status,
                answer.body.chars().take(200).collect::<String>()
            ),
        ));
    }
    let has_ring = ipam["Entries"].as_array().is_some_and(|e| !e.is_empty());
    if has_ring {
        return Ok(());
    }
    // The ring is made on the first request: start consensus now, so pods need not wait.
    let _ = api.prime();
    Err(unavailable(
        "weave-router is awaiting IPAM consensus".into(),
        ipam["Paxos"].to_string(),
    ))
}

/// The host end's name for `(container, ifname)`: short enough for the kernel, distinct for
/// distinct attachments (a hash, since container ids share long prefixes).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_PREFIX}{:07x}",
        fnv1a(container_id, ifname) & 0xfff_ffff
    )
}

fn peer_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{PEER_PREFIX}{:07x}",
        fnv1a(container_id, ifname) & 0xfff_ffff
    )
}

/// FNV-1a (64-bit) of `a`, a separator and `b`: stable across Rust versions and processes,
/// which `std`'s hasher does not promise; eight lines do not warrant a crate.
fn fnv1a(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn open_netns(att: &Attachment) -> Result<File, Failure> {
    let path = att.netns.as_deref().unwrap_or_default();
    let ns = File::open(path).map_err(|e| {
        Failure::new(
            ErrorCode::UnknownContainer,
            format!("CNI_NETNS: cannot open {path}"),
            e,
        )
    })?;
    let own = std::fs::metadata("/proc/self/ns/net").map_err(io_failure("/proc/self/ns/net"))?;
    let theirs = ns.metadata().map_err(io_failure("stat CNI_NETNS"))?;
    if own.dev() == theirs.dev() && own.ino() == theirs.ino() {
        return Err(Failure::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS: {path} is the host's own network namespace"),
            "",
        ));
    }
    Ok(ns)
}

async fn allocate(env: &CniEnv, att: &Attachment, conf: &NetConf) -> Result<Lease, Failure> {
    let (subnet, gateway, routes) = match &conf.ipam {
        Ipam::Plugin(kind) => return delegate_add(env, kind, conf),
        Ipam::Weave {
            subnet,
            gateway,
            routes,
        } => (*subnet, *gateway, routes.clone()),
    };
    let (addr, plen) = router_allocate(conf, &att.container_id, subnet, "allocate an address")?;
    let routes = routes
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_value(r.clone()).ok())
        .collect();
    Ok(Lease {
        addr,
        plen,
        gateway,
        routes,
    })
}

/// Runs the chained IPAM plugin `kind` with this invocation's environment and stdin.
fn delegate_add(env: &CniEnv, kind: &str, conf: &NetConf) -> Result<Lease, Failure> {
    let out = delegate(env, kind, "ADD", conf)?;
    let result: Value = serde_json::from_slice(&out).map_err(|e| {
        Failure::new(
            ErrorCode::DecodeFailure,
            format!("IPAM plugin {kind}'s result"),
            e,
        )
    })?;
    let ip = &result["ips"][0];
    let (addr, plen) = ip["address"].as_str().and_then(parse_cidr).ok_or_else(|| {
        Failure::new(
            ErrorCode::AddressRefused,
            format!("IPAM plugin {kind} gave no IPv4 address"),
            &result,
        )
    })?;
    Ok(Lease {
        addr,
        plen,
        gateway: ip["gateway"].as_str().and_then(|g| g.parse().ok()),
        routes: serde_json::from_value(result["routes"].clone()).unwrap_or_default(),
    })
}

fn delegate(env: &CniEnv, kind: &str, command: &str, conf: &NetConf) -> Result<Vec<u8>, Failure> {
    let bin = env
        .path
        .iter()
        .map(|dir| std::path::Path::new(dir).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::new(
                ErrorCode::InvalidConfig,
                format!("ipam.type: plugin {kind} not found on CNI_PATH"),
                env.path.join(":"),
            )
        })?;
    let mut child = Process::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io_failure("start the IPAM plugin"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&conf.raw)
            .map_err(io_failure("write to the IPAM plugin"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_failure("wait for the IPAM plugin"))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Err(Failure::new(
        ErrorCode::AddressRefused,
        format!(
            "IPAM plugin {kind} failed: {}",
            err["msg"].as_str().unwrap_or("")
        ),
        err["details"].as_str().unwrap_or_default(),
    ))
}

fn release(env: &CniEnv, att: &Attachment, conf: &NetConf) -> Result<(), Failure> {
    match &conf.ipam {
        Ipam::Plugin(kind) => delegate(env, kind, "DEL", conf).map(drop),
        Ipam::Weave { .. } => {
            match RouterApi::new(conf.router_api).release(&att.container_id) {
                Ok(a) if a.ok() || a.status == 404 => {}
                Ok(a) => eprintln!(
                    "weave-cni: the router refused to release {}: {} {}; GC will retry",
                    att.container_id, a.status, a.body
                ),
                Err(e) => eprintln!(
                    "weave-cni: cannot reach the router to release {} ({e}); GC will retry",
                    att.container_id
                ),
            }
            Ok(())
        }
    }
}

async fn attach(
    host: &Handle,
    pod: &Handle,
    ns: &File,
    att: &Attachment,
    conf: &NetConf,
    bridge: &link::Link,
    lease: &mut Lease,
) -> Result<Vec<Interface>, Failure> {
    if lease.gateway.is_none() && lease.routes.is_empty() {
        lease.gateway = Some(bridge_gateway(host, conf, bridge, lease).await?);
    }
    let host_name = host_veth_name(&att.container_id, &att.ifname);
    let peer_name = peer_veth_name(&att.container_id, &att.ifname);
    let mtu = conf.mtu.unwrap_or(bridge.mtu);
    link::create_veth(host, &host_name, &peer_name, mtu)
        .await
        .map_err(nl_failure)?;
    let missing = |n: &str| Failure::new(ErrorCode::IoFailure, format!("{n} vanished"), "");
    let host_end = link::find(host, &host_name)
        .await
        .map_err(nl_failure)?
        .ok_or_else(|| missing(&host_name))?;
    let peer_end = link::find(host, &peer_name)
        .await
        .map_err(nl_failure)?
        .ok_or_else(|| missing(&peer_name))?;
    link::attach(host, host_end.index, bridge.index, conf.hairpin_mode)
        .await
        .map_err(nl_failure)?;
    link::move_to(host, peer_end.index, ns)
        .await
        .map_err(nl_failure)?;
    let moved = link::find(pod, &peer_name)
        .await
        .map_err(nl_failure)?
        .ok_or_else(|| missing(&peer_name))?;
    link::configure(pod, moved.index, &att.ifname, lease.addr, lease.plen)
        .await
        .map_err(nl_failure)?;
    add_routes(pod, moved.index, lease).await?;
    Ok(vec![
        Interface {
            name: host_name,
            mac: host_end.mac,
            sandbox: String::new(),
            mtu: None,
        },
        Interface {
            name: att.ifname.clone(),
            mac: moved.mac,
            sandbox: att.netns.clone().unwrap_or_default(),
            mtu: Some(mtu),
        },
    ])
}

/// The bridge's address in the pod's subnet; the first ADD on a node gives the bridge one
/// from IPAM (ident `weave:expose`, as Weave Net does).
async fn bridge_gateway(
    host: &Handle,
    conf: &NetConf,
    bridge: &link::Link,
    lease: &Lease,
) -> Result<Ipv4Addr, Failure> {
    let subnet = (network(lease.addr, lease.plen), lease.plen);
    let have = link::addresses(host, bridge.index)
        .await
        .map_err(nl_failure)?;
    if let Some((ip, _)) = have
        .iter()
        .find(|(ip, _)| network(*ip, lease.plen) == subnet.0)
    {
        return Ok(*ip);
    }
    let (ip, plen) = router_allocate(
        conf,
        EXPOSE_IDENT,
        Some(subnet),
        "allocate the bridge's address",
    )?;
    link::ensure_address(host, bridge.index, ip, plen)
        .await
        .map_err(nl_failure)?;
    Ok(ip)
}

/// `POST /ip/{ident}` (in `subnet`): the address and prefix length the router gave.
fn router_allocate(
    conf: &NetConf,
    ident: &str,
    subnet: Option<(Ipv4Addr, u8)>,
    what: &str,
) -> Result<(Ipv4Addr, u8), Failure> {
    let answer = RouterApi::new(conf.router_api)
        .allocate(ident, subnet)
        .map_err(router_down)?;
    if !answer.ok() {
        return Err(refused(what, &answer));
    }
    parse_cidr(&answer.body).ok_or_else(|| {
        Failure::new(
            ErrorCode::IoFailure,
            "router's answer is not an address",
            &answer.body,
        )
    })
}

async fn add_routes(pod: &Handle, index: u32, lease: &Lease) -> Result<(), Failure> {
    let gw = lease.gateway;
    if lease.routes.is_empty() {
        let Some(gw) = gw else {
            return Ok(());
        };
        if network(gw, lease.plen) != network(lease.addr, lease.plen) {
            link::add_route(pod, index, gw, 32, None)
                .await
                .map_err(nl_failure)?;
        }
        return link::add_route(pod, index, Ipv4Addr::UNSPECIFIED, 0, Some(gw))
            .await
            .map_err(nl_failure);
    }
    for r in &lease.routes {
        let (dst, plen) = parse_cidr(&r.dst).ok_or_else(|| {
            Failure::new(
                ErrorCode::InvalidConfig,
                format!("ipam.routes: {:?} is not a CIDR", r.dst),
                "",
            )
        })?;
        link::add_route(pod, index, dst, plen, r.gw.or(gw))
            .await
            .map_err(nl_failure)?;
    }
    Ok(())
}

fn result_of(conf: &NetConf, interfaces: Vec<Interface>, lease: Lease) -> AddResult {
    let routes = if lease.routes.is_empty() {
        vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: lease.gateway,
        }]
    } else {
        lease.routes
    };
    AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces,
        ips: vec![IpConfig {
            version: ips_carry_version(&conf.cni_version).then(|| "4".to_owned()),
            address: format!("{}/{}", lease.addr, lease.plen),
            gateway: lease.gateway,
            interface: Some(1),
        }],
        routes,
        dns: conf.dns.clone().unwrap_or(Value::Null),
    }
}

fn network(ip: Ipv4Addr, plen: u8) -> Ipv4Addr {
    let mask = if plen == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(plen))
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn io_failure<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| Failure::new(ErrorCode::IoFailure, what, e)
}

fn nl_failure(e: link::NlError) -> Failure {
    Failure::new(ErrorCode::IoFailure, e.what, e.source)
}

fn router_down(e: std::io::Error) -> Failure {
    Failure::new(
        ErrorCode::TryAgainLater,
        "weave-router's API is not reachable",
        format!("{e}; is weave-router running on this node?"),
    )
}

fn refused(what: &str, answer: &crate::router_api::Answer) -> Failure {
    Failure::new(
        ErrorCode::AddressRefused,
        format!("weave-router refused to {what}"),
        format!("{} {}", answer.status, answer.body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ_for_similar_ids() {
        let a = host_veth_name("pod-0000000000001", "eth0");
        let b = host_veth_name("pod-0000000000002", "eth0");
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name("pod-0000000000001", "eth0"));
        assert_ne!(a, host_veth_name("pod-0000000000001", "net1"));
    }

    #[test]
    fn networks() {
        assert_eq!(
            network("10.32.1.2".parse().unwrap(), 12),
            "10.32.0.0".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            network("10.32.1.2".parse().unwrap(), 0),
            Ipv4Addr::UNSPECIFIED
        );
    }
}
