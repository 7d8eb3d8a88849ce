//! Open vSwitch's kernel datapath messages (generic netlink families `ovs_datapath`,
//! `ovs_vport`, `ovs_flow`, `ovs_packet`) as values: built into bytes and parsed from
//! them here, sent by [`super::genl`]. Pure: no sockets.
//!
//! Written by hand: no maintained crate speaks these families (the `openvswitch.h` uapi is
//! small and stable), and the netlink attribute format is a few lines.
//!
//! Flows follow Weave Net's fast datapath: the key is the input port, the Ethernet
//! addresses and, for frames from the VXLAN vport, the tunnel (VNI and both addresses);
//! every other field is wildcarded by an explicit mask. Unlike Weave Net's, the tunnel key
//! carries the TTL the kernel reported (wildcarded by the mask): newer kernels refuse a
//! tunnel key without one ("IP tunnel TTL not specified").

use std::net::Ipv4Addr;

/// Generic netlink's controller family.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
pub const F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const F_ACK: u16 = 0x4;
/// `NLM_F_ECHO`: the kernel answers a change with the changed object, not only with a
/// notification to its multicast group.
pub const F_ECHO: u16 = 0x8;
/// `NLM_F_DUMP` (`ROOT | MATCH`).
pub const F_DUMP: u16 = 0x300;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLM_F_EXCL`.
pub const F_EXCL: u16 = 0x200;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The four families' names.
pub const DATAPATH_FAMILY: &str = "ovs_datapath";
/// See [`DATAPATH_FAMILY`].
pub const VPORT_FAMILY: &str = "ovs_vport";
/// See [`DATAPATH_FAMILY`].
pub const FLOW_FAMILY: &str = "ovs_flow";
/// See [`DATAPATH_FAMILY`].
pub const PACKET_FAMILY: &str = "ovs_packet";

const DATAPATH_VERSION: u8 = 2;
const VPORT_VERSION: u8 = 1;
const FLOW_VERSION: u8 = 1;
const PACKET_VERSION: u8 = 1;

/// Commands shared by datapaths, vports and flows.
const CMD_NEW: u8 = 1;
const CMD_DEL: u8 = 2;
const CMD_GET: u8 = 3;
const CMD_SET: u8 = 4;

const DP_ATTR_NAME: u16 = 1;
const DP_ATTR_UPCALL_PID: u16 = 2;
const DP_ATTR_USER_FEATURES: u16 = 5;
const DP_F_UNALIGNED: u32 = 1;
const DP_F_VPORT_PIDS: u32 = 2;

const VPORT_ATTR_PORT_NO: u16 = 1;
const VPORT_ATTR_TYPE: u16 = 2;
const VPORT_ATTR_NAME: u16 = 3;
const VPORT_ATTR_OPTIONS: u16 = 4;
const VPORT_ATTR_UPCALL_PID: u16 = 5;
const TUNNEL_ATTR_DST_PORT: u16 = 1;

const FLOW_ATTR_KEY: u16 = 1;
const FLOW_ATTR_ACTIONS: u16 = 2;
const FLOW_ATTR_USED: u16 = 5;
const FLOW_ATTR_CLEAR: u16 = 6;
const FLOW_ATTR_MASK: u16 = 7;

/// A frame that missed every flow (kernel to user).
pub const PACKET_CMD_MISS: u8 = 1;
const PACKET_CMD_EXECUTE: u8 = 3;
const PACKET_ATTR_PACKET: u16 = 1;
const PACKET_ATTR_KEY: u16 = 2;
const PACKET_ATTR_ACTIONS: u16 = 3;

const KEY_ATTR_IN_PORT: u16 = 3;
const KEY_ATTR_ETHERNET: u16 = 4;
const KEY_ATTR_TUNNEL: u16 = 16;
const TUNNEL_KEY_ATTR_ID: u16 = 0;
const TUNNEL_KEY_ATTR_IPV4_SRC: u16 = 1;
const TUNNEL_KEY_ATTR_IPV4_DST: u16 = 2;
const TUNNEL_KEY_ATTR_TTL: u16 = 4;
const TUNNEL_KEY_ATTR_DONT_FRAGMENT: u16 = 5;

const ACTION_ATTR_OUTPUT: u16 = 1;
const ACTION_ATTR_SET: u16 = 3;

/// A vport's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VportType {
    /// An existing network device.
    Netdev,
    /// The datapath's own device.
    Internal,
    /// A VXLAN tunnel on a UDP port.
    Vxlan,
    /// Something else (GRE, Geneve, ...), by number.
    Other(u32),
}

impl VportType {
    fn raw(self) -> u32 {
        match self {
            VportType::Netdev => 1,
            VportType::Internal => 2,
            VportType::Vxlan => 4,
            VportType::Other(n) => n,
        }
    }

    fn from_raw(n: u32) -> Self {
        match n {
            1 => VportType::Netdev,
            2 => VportType::Internal,
            4 => VportType::Vxlan,
            n => VportType::Other(n),
        }
    }
}

/// Why bytes from the kernel could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// A length that runs past the buffer.
    #[error("truncated netlink {0}")]
    Truncated(&'static str),
    /// A required attribute is missing.
    #[error("no {0} attribute")]
    Missing(&'static str),
}

/// Netlink attributes being built, each padded to four bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    /// Adds an attribute with a raw payload.
    pub fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// Adds a u32 in host order.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    /// Adds a NUL-terminated string.
    pub fn string(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b)
    }

    /// Adds attributes nested in one.
    pub fn nested(&mut self, ty: u16, inner: &Attrs) -> &mut Self {
        self.put(ty | NLA_F_NESTED, &inner.0)
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Splits attributes into (type, payload), the nested flag masked off.
pub fn parse_attrs(mut buf: &[u8]) -> Result<AttrList<'_>, MsgError> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(MsgError::Truncated("attribute"));
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

fn find<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
}

fn u32_of(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// One generic netlink request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The family id (resolved by name first).
    pub family: u16,
    /// The command.
    pub cmd: u8,
    /// The family's version.
    pub version: u8,
    /// The `ovs_header` (datapath ifindex), absent for the controller family.
    pub dp_ifindex: Option<i32>,
    /// Extra netlink flags besides `NLM_F_REQUEST`.
    pub flags: u16,
    /// The attributes.
    pub attrs: Attrs,
}

impl Request {
    /// The message bytes with sequence number `seq`.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut body = vec![self.cmd, self.version, 0, 0];
        if let Some(ifindex) = self.dp_ifindex {
            body.extend_from_slice(&ifindex.to_ne_bytes());
        }
        body.extend_from_slice(self.attrs.bytes());
        let len = 16 + body.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&self.family.to_ne_bytes());
        out.extend_from_slice(&(F_REQUEST | self.flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// One message from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A family message: its command, datapath ifindex (OVS families) and attributes.
    Msg {
        /// The sequence number it answers (0 for upcalls).
        seq: u32,
        /// The generic netlink command.
        cmd: u8,
        /// The payload after the generic netlink header.
        payload: &'a [u8],
    },
    /// An acknowledgement (errno 0) or an error (negative errno).
    Ack {
        /// The sequence number it answers.
        seq: u32,
        /// 0 or a negative errno.
        errno: i32,
    },
    /// The end of a dump.
    Done {
        /// The sequence number it ends.
        seq: u32,
    },
}

/// Splits a datagram into its messages.
pub fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, MsgError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32_of(&buf[0..4]).ok_or(MsgError::Truncated("header"))? as usize;
        if len < 16 || len > buf.len() {
            return Err(MsgError::Truncated("message"));
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32_of(&buf[8..12]).ok_or(MsgError::Truncated("header"))?;
        let body = &buf[16..len];
        out.push(match ty {
            NLMSG_ERROR => Reply::Ack {
                seq,
                errno: body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("four bytes")))
                    .ok_or(MsgError::Truncated("error"))?,
            },
            NLMSG_DONE => Reply::Done { seq },
            _ => {
                if body.len() < 4 {
                    return Err(MsgError::Truncated("generic header"));
                }
                Reply::Msg {
                    seq,
                    cmd: body[0],
                    payload: &body[4..],
                }
            }
        });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// Attributes as [`parse_attrs`] returns them: (type, payload).
pub type AttrList<'a> = Vec<(u16, &'a [u8])>;

/// Splits an OVS family payload into its datapath ifindex and attributes.
pub fn ovs_payload(payload: &[u8]) -> Result<(i32, AttrList<'_>), MsgError> {
    let head = payload.get(..4).ok_or(MsgError::Truncated("ovs header"))?;
    let ifindex = i32::from_ne_bytes(head.try_into().expect("four bytes"));
    Ok((ifindex, parse_attrs(&payload[4..])?))
}

/// A request of an OVS family (id `family`, speaking `version`) about datapath `dp` (0
/// before there is one). The socket adds the acknowledgement flag ([`super::genl`]).
fn ovs_request(family: u16, version: u8, cmd: u8, dp: i32, flags: u16, attrs: Attrs) -> Request {
    Request {
        family,
        cmd,
        version,
        dp_ifindex: Some(dp),
        flags,
        attrs,
    }
}

/// Asks the controller for a family's id.
pub fn get_family(name: &str) -> Request {
    let mut attrs = Attrs::default();
    attrs.string(CTRL_ATTR_FAMILY_NAME, name);
    Request {
        family: GENL_ID_CTRL,
        cmd: CTRL_CMD_GETFAMILY,
        version: 1,
        dp_ifindex: None,
        flags: 0,
        attrs,
    }
}

/// The family id in the controller's answer.
pub fn family_id(payload: &[u8]) -> Result<u16, MsgError> {
    let attrs = parse_attrs(payload)?;
    let p = find(&attrs, CTRL_ATTR_FAMILY_ID).ok_or(MsgError::Missing("family id"))?;
    p.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or(MsgError::Truncated("family id"))
}

/// Creates datapath `name` whose misses go to netlink port `upcall_pid`.
pub fn datapath_new(family: u16, name: &str, upcall_pid: u32) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .string(DP_ATTR_NAME, name)
        .u32(DP_ATTR_UPCALL_PID, upcall_pid)
        .u32(DP_ATTR_USER_FEATURES, USER_FEATURES);
    ovs_request(
        family,
        DATAPATH_VERSION,
        CMD_NEW,
        0,
        F_ECHO | F_CREATE | F_EXCL,
        attrs,
    )
}

/// Looks up datapath `name`.
pub fn datapath_get(family: u16, name: &str) -> Request {
    let mut attrs = Attrs::default();
    attrs.string(DP_ATTR_NAME, name);
    ovs_request(family, DATAPATH_VERSION, CMD_GET, 0, 0, attrs)
}

/// The user features this router runs a datapath with: misses per vport, to the netlink
/// port each vport names (not per CPU).
pub const USER_FEATURES: u32 = DP_F_UNALIGNED | DP_F_VPORT_PIDS;

/// Sets datapath `name`'s user features to [`USER_FEATURES`].
pub fn datapath_set_features(family: u16, name: &str) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .string(DP_ATTR_NAME, name)
        .u32(DP_ATTR_USER_FEATURES, USER_FEATURES);
    ovs_request(family, DATAPATH_VERSION, CMD_SET, 0, 0, attrs)
}

/// The user features in a datapath message's attributes.
pub fn datapath_features(attrs: &[(u16, &[u8])]) -> Option<u32> {
    find(attrs, DP_ATTR_USER_FEATURES).and_then(u32_of)
}

/// Deletes datapath `name` (its vports and flows go with it).
pub fn datapath_del(family: u16, name: &str) -> Request {
    let mut attrs = Attrs::default();
    attrs.string(DP_ATTR_NAME, name);
    ovs_request(family, DATAPATH_VERSION, CMD_DEL, 0, 0, attrs)
}

/// A vport as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vport {
    /// Its number in the datapath.
    pub port_no: u32,
    /// Its kind.
    pub ty: VportType,
    /// Its name.
    pub name: String,
    /// The netlink ports its misses go to.
    pub upcall_pids: Vec<u32>,
}

/// Reads a vport message's attributes.
pub fn parse_vport(attrs: &[(u16, &[u8])]) -> Result<Vport, MsgError> {
    let port_no = find(attrs, VPORT_ATTR_PORT_NO)
        .and_then(u32_of)
        .ok_or(MsgError::Missing("vport number"))?;
    let ty = find(attrs, VPORT_ATTR_TYPE)
        .and_then(u32_of)
        .ok_or(MsgError::Missing("vport type"))?;
    let name = find(attrs, VPORT_ATTR_NAME).ok_or(MsgError::Missing("vport name"))?;
    let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
    let upcall_pids = find(attrs, VPORT_ATTR_UPCALL_PID)
        .unwrap_or(&[])
        .chunks_exact(4)
        .filter_map(u32_of)
        .collect();
    Ok(Vport {
        port_no,
        ty: VportType::from_raw(ty),
        name,
        upcall_pids,
    })
}

/// Adds vport `name` of kind `ty` (a VXLAN one on UDP `dst_port`) whose misses go to
/// `upcall_pid`.
pub fn vport_new(
    family: u16,
    dp: i32,
    name: &str,
    ty: VportType,
    upcall_pid: u32,
    dst_port: Option<u16>,
) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .u32(VPORT_ATTR_TYPE, ty.raw())
        .string(VPORT_ATTR_NAME, name)
        .u32(VPORT_ATTR_UPCALL_PID, upcall_pid);
    if let Some(port) = dst_port {
        let mut options = Attrs::default();
        options.put(TUNNEL_ATTR_DST_PORT, &port.to_ne_bytes());
        attrs.nested(VPORT_ATTR_OPTIONS, &options);
    }
    ovs_request(
        family,
        VPORT_VERSION,
        CMD_NEW,
        dp,
        F_ECHO | F_CREATE | F_EXCL,
        attrs,
    )
}

/// Lists the datapath's vports.
pub fn vport_dump(family: u16, dp: i32) -> Request {
    ovs_request(family, VPORT_VERSION, CMD_GET, dp, F_DUMP, Attrs::default())
}

/// Sets where a vport's misses go.
pub fn vport_set_upcall(family: u16, dp: i32, port_no: u32, upcall_pid: u32) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .u32(VPORT_ATTR_PORT_NO, port_no)
        .u32(VPORT_ATTR_UPCALL_PID, upcall_pid);
    ovs_request(family, VPORT_VERSION, CMD_SET, dp, 0, attrs)
}

/// Removes a vport.
pub fn vport_del(family: u16, dp: i32, port_no: u32) -> Request {
    let mut attrs = Attrs::default();
    attrs.u32(VPORT_ATTR_PORT_NO, port_no);
    ovs_request(family, VPORT_VERSION, CMD_DEL, dp, 0, attrs)
}

/// What a flow matches: the input port, the Ethernet addresses and, for a frame from the
/// tunnel, its tunnel key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMatch {
    /// Input vport.
    pub in_port: u32,
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// The tunnel key the kernel reported with the miss (matched on VNI and addresses).
    pub tunnel: Option<Vec<u8>>,
}

impl FlowMatch {
    fn key(&self) -> Attrs {
        let mut key = Attrs::default();
        if let Some(t) = &self.tunnel {
            key.put(KEY_ATTR_TUNNEL | NLA_F_NESTED, t);
        }
        key.u32(KEY_ATTR_IN_PORT, self.in_port);
        let mut eth = self.eth_src.to_vec();
        eth.extend_from_slice(&self.eth_dst);
        key.put(KEY_ATTR_ETHERNET, &eth);
        key
    }

    fn mask(&self) -> Attrs {
        let mut mask = Attrs::default();
        if self.tunnel.is_some() {
            let mut t = Attrs::default();
            t.put(TUNNEL_KEY_ATTR_ID, &[0xff; 8])
                .put(TUNNEL_KEY_ATTR_IPV4_SRC, &[0xff; 4])
                .put(TUNNEL_KEY_ATTR_IPV4_DST, &[0xff; 4]);
            mask.nested(KEY_ATTR_TUNNEL, &t);
        }
        mask.u32(KEY_ATTR_IN_PORT, u32::MAX);
        mask.put(KEY_ATTR_ETHERNET, &[0xff; 12]);
        mask
    }
}

/// An action of a flow or an executed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send out of a vport.
    Output(u32),
    /// Set the tunnel for the next output to a VXLAN vport: VNI, destination, TTL 64,
    /// DF, no UDP checksum (as Weave Net's flows).
    SetTunnel {
        /// The VNI.
        vni: u32,
        /// The peer's address.
        dst: Ipv4Addr,
    },
}

fn encode_actions(actions: &[Action]) -> Attrs {
    let mut out = Attrs::default();
    for a in actions {
        match a {
            Action::Output(port) => {
                out.u32(ACTION_ATTR_OUTPUT, *port);
            }
            Action::SetTunnel { vni, dst } => {
                let mut t = Attrs::default();
                t.put(TUNNEL_KEY_ATTR_ID, &u64::from(*vni).to_be_bytes())
                    .put(TUNNEL_KEY_ATTR_IPV4_DST, &dst.octets())
                    .put(TUNNEL_KEY_ATTR_TTL, &[64])
                    .put(TUNNEL_KEY_ATTR_DONT_FRAGMENT, &[]);
                let mut key = Attrs::default();
                key.nested(KEY_ATTR_TUNNEL, &t);
                out.nested(ACTION_ATTR_SET, &key);
            }
        }
    }
    out
}

/// Installs a flow.
pub fn flow_new(family: u16, dp: i32, m: &FlowMatch, actions: &[Action]) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .nested(FLOW_ATTR_KEY, &m.key())
        .nested(FLOW_ATTR_MASK, &m.mask())
        .nested(FLOW_ATTR_ACTIONS, &encode_actions(actions));
    ovs_request(family, FLOW_VERSION, CMD_NEW, dp, F_CREATE, attrs)
}

/// Deletes every flow of the datapath (no key: flush).
pub fn flow_flush(family: u16, dp: i32) -> Request {
    ovs_request(family, FLOW_VERSION, CMD_DEL, dp, 0, Attrs::default())
}

/// Deletes the flow with this key (as a dump reported it).
pub fn flow_del(family: u16, dp: i32, key: &[u8]) -> Request {
    let mut attrs = Attrs::default();
    attrs.put(FLOW_ATTR_KEY | NLA_F_NESTED, key);
    ovs_request(family, FLOW_VERSION, CMD_DEL, dp, 0, attrs)
}

/// Clears a flow's last-used time and statistics.
pub fn flow_clear(family: u16, dp: i32, key: &[u8]) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .put(FLOW_ATTR_KEY | NLA_F_NESTED, key)
        .put(FLOW_ATTR_CLEAR, &[]);
    ovs_request(family, FLOW_VERSION, CMD_SET, dp, 0, attrs)
}

/// Lists the datapath's flows.
pub fn flow_dump(family: u16, dp: i32) -> Request {
    ovs_request(family, FLOW_VERSION, CMD_GET, dp, F_DUMP, Attrs::default())
}

/// A flow from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    /// Its key attributes, as given back to delete or clear it.
    pub key: Vec<u8>,
    /// Whether a packet used it since it was made or cleared.
    pub used: bool,
    /// Its actions, raw.
    pub actions: Vec<u8>,
}

/// Reads a flow message's attributes.
pub fn parse_flow(attrs: &[(u16, &[u8])]) -> Result<FlowInfo, MsgError> {
    Ok(FlowInfo {
        key: find(attrs, FLOW_ATTR_KEY)
            .ok_or(MsgError::Missing("flow key"))?
            .to_vec(),
        used: find(attrs, FLOW_ATTR_USED).is_some(),
        actions: find(attrs, FLOW_ATTR_ACTIONS).unwrap_or(&[]).to_vec(),
    })
}

/// Sends `packet` through `actions`; `key` is the flow key the kernel reported with it.
pub fn packet_execute(
    family: u16,
    dp: i32,
    packet: &[u8],
    key: &[u8],
    actions: &[Action],
) -> Request {
    let mut attrs = Attrs::default();
    attrs
        .put(PACKET_ATTR_PACKET, packet)
        .put(PACKET_ATTR_KEY | NLA_F_NESTED, key)
        .nested(PACKET_ATTR_ACTIONS, &encode_actions(actions));
    ovs_request(family, PACKET_VERSION, PACKET_CMD_EXECUTE, dp, 0, attrs)
}

/// A tunnel key, as far as the fast datapath reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// The VNI.
    pub vni: u32,
    /// The outer source address (the sending peer).
    pub src: Ipv4Addr,
    /// The outer destination address (us).
    pub dst: Ipv4Addr,
}

/// A frame that matched no flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// The vport it came in on.
    pub in_port: u32,
    /// Its source MAC.
    pub eth_src: [u8; 6],
    /// Its destination MAC.
    pub eth_dst: [u8; 6],
    /// Its tunnel key, read and raw, when it came from a tunnel.
    pub tunnel: Option<(Tunnel, Vec<u8>)>,
    /// The whole flow key the kernel extracted, raw (for executing the frame).
    pub key: Vec<u8>,
    /// The frame.
    pub packet: Vec<u8>,
}

/// Reads a miss upcall's attributes.
pub fn parse_miss(attrs: &[(u16, &[u8])]) -> Result<Miss, MsgError> {
    let packet = find(attrs, PACKET_ATTR_PACKET).ok_or(MsgError::Missing("packet"))?;
    let key_raw = find(attrs, PACKET_ATTR_KEY).ok_or(MsgError::Missing("packet key"))?;
    let key = parse_attrs(key_raw)?;
    let in_port = find(&key, KEY_ATTR_IN_PORT)
        .and_then(u32_of)
        .ok_or(MsgError::Missing("in_port"))?;
    let eth = find(&key, KEY_ATTR_ETHERNET).ok_or(MsgError::Missing("ethernet"))?;
    if eth.len() < 12 {
        return Err(MsgError::Truncated("ethernet key"));
    }
    let tunnel = match find(&key, KEY_ATTR_TUNNEL) {
        None => None,
        Some(raw) => {
            let t = parse_attrs(raw)?;
            let id = find(&t, TUNNEL_KEY_ATTR_ID)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or(MsgError::Missing("tunnel id"))?;
            let addr = |ty, what| -> Result<Ipv4Addr, MsgError> {
                let b: [u8; 4] = find(&t, ty)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(MsgError::Missing(what))?;
                Ok(Ipv4Addr::from(b))
            };
            Some((
                Tunnel {
                    vni: (id & 0xff_ffff) as u32,
                    src: addr(TUNNEL_KEY_ATTR_IPV4_SRC, "tunnel source")?,
                    dst: addr(TUNNEL_KEY_ATTR_IPV4_DST, "tunnel destination")?,
                },
                raw.to_vec(),
            ))
        }
    };
    Ok(Miss {
        in_port,
        eth_src: eth[0..6].try_into().expect("six bytes"),
        eth_dst: eth[6..12].try_into().expect("six bytes"),
        tunnel,
        key: key_raw.to_vec(),
        packet: packet.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (VNI, destination) of a flow's set-tunnel action, if it has one.
    fn tunnel_of_actions(actions: &[u8]) -> Option<(u32, Ipv4Addr)> {
        let acts = parse_attrs(actions).ok()?;
        let set = find(&acts, ACTION_ATTR_SET)?;
        let keys = parse_attrs(set).ok()?;
        let t = parse_attrs(find(&keys, KEY_ATTR_TUNNEL)?).ok()?;
        let id = u64::from_be_bytes(find(&t, TUNNEL_KEY_ATTR_ID)?.try_into().ok()?);
        let dst: [u8; 4] = find(&t, TUNNEL_KEY_ATTR_IPV4_DST)?.try_into().ok()?;
        Some((u32::try_from(id).ok()?, Ipv4Addr::from(dst)))
    }

    #[test]
    fn attributes_are_padded_and_parse_back() {
        let mut a = Attrs::default();
        a.string(3, "datapath").u32(5, 7).put(9, &[1]);
        // "datapath\0" is 9 bytes: 13 with the header, padded to 16.
        assert_eq!(a.bytes().len(), 16 + 8 + 8);
        let parsed = parse_attrs(a.bytes()).unwrap();
        assert_eq!(parsed[0], (3, &b"datapath\0"[..]));
        assert_eq!(parsed[1], (5, &7u32.to_ne_bytes()[..]));
        assert_eq!(parsed[2], (9, &[1u8][..]));
        assert!(parse_attrs(&a.bytes()[..6]).is_err());
    }

    #[test]
    fn requests_carry_the_netlink_and_ovs_headers() {
        let r = datapath_get(0x20, "datapath");
        let b = r.encode(9);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x20);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), F_REQUEST);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        assert_eq!(&b[16..20], &[CMD_GET, DATAPATH_VERSION, 0, 0]);
        assert_eq!(&b[20..24], &0i32.to_ne_bytes());
        let attrs = parse_attrs(&b[24..]).unwrap();
        assert_eq!(find(&attrs, DP_ATTR_NAME), Some(&b"datapath\0"[..]));
        // The controller family has no ovs_header.
        let f = get_family("ovs_flow").encode(1);
        assert_eq!(f.len(), 16 + 4 + 4 + 12);
    }

    #[test]
    fn set_tunnel_is_weaves_tunnel_with_ttl_64_and_df() {
        let acts = encode_actions(&[
            Action::SetTunnel {
                vni: 0xa005,
                dst: Ipv4Addr::new(10, 0, 0, 2),
            },
            Action::Output(3),
        ]);
        assert_eq!(
            tunnel_of_actions(acts.bytes()),
            Some((0xa005, Ipv4Addr::new(10, 0, 0, 2)))
        );
        let parsed = parse_attrs(acts.bytes()).unwrap();
        assert_eq!(parsed[1], (ACTION_ATTR_OUTPUT, &3u32.to_ne_bytes()[..]));
        let set = parse_attrs(parsed[0].1).unwrap();
        let t = parse_attrs(find(&set, KEY_ATTR_TUNNEL).unwrap()).unwrap();
        assert_eq!(find(&t, TUNNEL_KEY_ATTR_TTL), Some(&[64u8][..]));
        assert_eq!(find(&t, TUNNEL_KEY_ATTR_DONT_FRAGMENT), Some(&[][..]));
        assert_eq!(
            find(&t, TUNNEL_KEY_ATTR_ID),
            Some(&[0, 0, 0, 0, 0, 0, 0xa0, 0x05][..])
        );
    }

    #[test]
    fn a_miss_from_the_tunnel_reads_back() {
        let mut tun = Attrs::default();
        tun.put(TUNNEL_KEY_ATTR_ID, &40965u64.to_be_bytes())
            .put(TUNNEL_KEY_ATTR_IPV4_SRC, &[10, 0, 0, 2])
            .put(TUNNEL_KEY_ATTR_IPV4_DST, &[10, 0, 0, 1])
            .put(TUNNEL_KEY_ATTR_TTL, &[64]);
        let mut key = Attrs::default();
        key.nested(KEY_ATTR_TUNNEL, &tun)
            .u32(KEY_ATTR_IN_PORT, 2)
            .put(KEY_ATTR_ETHERNET, &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        let mut msg = Attrs::default();
        msg.put(PACKET_ATTR_PACKET, &[0xaa; 60])
            .nested(PACKET_ATTR_KEY, &key);
        let miss = parse_miss(&parse_attrs(msg.bytes()).unwrap()).unwrap();
        assert_eq!(miss.in_port, 2);
        assert_eq!(miss.eth_src, [2, 0, 0, 0, 0, 1]);
        let (t, raw) = miss.tunnel.clone().unwrap();
        assert_eq!(
            t,
            Tunnel {
                vni: 40965,
                src: Ipv4Addr::new(10, 0, 0, 2),
                dst: Ipv4Addr::new(10, 0, 0, 1)
            }
        );
        // A flow for it keeps the kernel's tunnel key (TTL included) and masks VNI and
        // addresses only.
        let m = FlowMatch {
            in_port: miss.in_port,
            eth_src: miss.eth_src,
            eth_dst: miss.eth_dst,
            tunnel: Some(raw),
        };
        let key = m.key();
        let k = parse_attrs(key.bytes()).unwrap();
        let kt = parse_attrs(find(&k, KEY_ATTR_TUNNEL).unwrap()).unwrap();
        assert_eq!(find(&kt, TUNNEL_KEY_ATTR_TTL), Some(&[64u8][..]));
        let mask = m.mask();
        let mk = parse_attrs(mask.bytes()).unwrap();
        let mt = parse_attrs(find(&mk, KEY_ATTR_TUNNEL).unwrap()).unwrap();
        assert_eq!(mt.len(), 3);
        assert!(find(&mt, TUNNEL_KEY_ATTR_TTL).is_none());
    }

    #[test]
    fn replies_split_into_messages_acks_and_done() {
        let mut buf = Vec::new();
        let mut push = |ty: u16, seq: u32, body: &[u8]| {
            let len = 16 + body.len();
            buf.extend_from_slice(&(len as u32).to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(body);
            buf.resize(buf.len().next_multiple_of(4), 0);
        };
        push(0x21, 5, &[CMD_NEW, 1, 0, 0, 7, 0, 0, 0]);
        push(NLMSG_ERROR, 5, &(-17i32).to_ne_bytes());
        push(NLMSG_DONE, 6, &[0, 0, 0, 0]);
        let r = parse_replies(&buf).unwrap();
        assert_eq!(
            r,
            vec![
                Reply::Msg {
                    seq: 5,
                    cmd: CMD_NEW,
                    payload: &[7, 0, 0, 0][..]
                },
                Reply::Ack { seq: 5, errno: -17 },
                Reply::Done { seq: 6 }
            ]
        );
        assert!(parse_replies(&buf[..20]).is_err());
    }
}
