//! The IPAM endpoints, as Weave Net serves them: `POST /ip/{id}[/{ip}/{plen}]` allocates,
//! `PUT /ip/{id}/{ip}/{plen}` claims, `GET /ip/{id}` looks up, `DELETE /ip/{id}[/{ip}]`
//! releases, `GET /ring` waits for the ring, `DELETE /peer/{name}` takes over a dead peer's
//! space, `GET /ip` lists every allocation and `GET /ipinfo/defaultsubnet` names the default
//! subnet.
//!
//! Requests that wait (allocate, claim, prime) are bounded: `?timeout=SECONDS` (1-3600,
//! default [`DEFAULT_WAIT`]); a client that goes away cancels its request.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{form, json_response, unavailable, ApiRequest, ApiState};
use crate::ipam::address::{Address, Cidr};
use crate::ipam::allocator::{IpamError, IpamStatus};

/// How long a request waits for the ring or for space when the client sets no `timeout`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);
/// The longest wait a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A question or order for the allocator, which lives with the mesh.
#[derive(Debug)]
pub enum IpamRequest {
    /// An address for `ident` from `subnet` (default subnet when `None`).
    Allocate {
        /// Container id or name.
        ident: String,
        /// Where from.
        subnet: Option<Cidr>,
        /// How long it may wait.
        wait: Duration,
        /// The answer.
        reply: oneshot::Sender<Result<Cidr, IpamError>>,
    },
    /// Records that `ident` holds `cidr`.
    Claim {
        /// Container id or name.
        ident: String,
        /// The address and its subnet's prefix length.
        cidr: Cidr,
        /// How long it may wait.
        wait: Duration,
        /// The answer.
        reply: oneshot::Sender<Result<(), IpamError>>,
    },
    /// The addresses `ident` holds inside `subnet` (default subnet when `None`).
    Lookup {
        /// Container id or name.
        ident: String,
        /// Where to look.
        subnet: Option<Cidr>,
        /// The answer.
        reply: oneshot::Sender<Vec<Cidr>>,
    },
    /// Releases everything `ident` holds.
    Release {
        /// Container id or name.
        ident: String,
        /// The answer.
        reply: oneshot::Sender<Result<(), IpamError>>,
    },
    /// Releases one address of `ident`.
    Free {
        /// Container id or name.
        ident: String,
        /// The address.
        addr: Address,
        /// The answer.
        reply: oneshot::Sender<Result<(), IpamError>>,
    },
    /// Waits until the ring exists.
    Prime {
        /// How long it may wait.
        wait: Duration,
        /// The answer.
        reply: oneshot::Sender<Result<(), IpamError>>,
    },
    /// Takes over a dead peer's space (`rmpeer`).
    TakeOver {
        /// Peer name or nickname.
        peer: String,
        /// The answer: addresses taken over.
        reply: oneshot::Sender<Result<u64, IpamError>>,
    },
    /// Every id and what it holds.
    List {
        /// The answer.
        reply: oneshot::Sender<Vec<(String, Vec<Cidr>)>>,
    },
    /// The allocator's status; `None` when IPAM is off.
    Status {
        /// The answer.
        reply: oneshot::Sender<Option<IpamStatus>>,
    },
}

/// The IPAM routes, to merge into the API router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ip", get(list))
        .route("/ip/{id}", get(lookup).post(allocate).delete(release))
        .route(
            "/ip/{id}/{ip}/{plen}",
            get(lookup_in).post(allocate_in).put(claim),
        )
        .route("/ip/{id}/{ip}", delete(free))
        .route("/ring", get(prime))
        .route("/peer/{name}", delete(take_over))
        .route("/ipinfo/defaultsubnet", get(default_subnet))
        .route("/status/ipam", get(status_page))
}

impl ApiState {
    /// Sends `req` to the owner and waits for the answer; 503 when it is gone or IPAM is off.
    async fn ipam<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> IpamRequest,
    ) -> Result<T, Response> {
        if !self.ipam {
            return Err(disabled());
        }
        let (reply, rx) = oneshot::channel();
        if self
            .requests
            .send(ApiRequest::Ipam(make(reply)))
            .await
            .is_err()
        {
            return Err(unavailable());
        }
        rx.await.map_err(|_| unavailable())
    }

    /// The allocator's status, `None` when IPAM is off.
    pub async fn ipam_status(&self) -> Result<Option<IpamStatus>, Response> {
        if !self.ipam {
            return Ok(None);
        }
        self.ipam(|reply| IpamRequest::Status { reply }).await
    }
}

fn disabled() -> Response {
    (
        StatusCode::NOT_FOUND,
        "IP address management is off (the router was started with --ipalloc-range \"\")\n",
    )
        .into_response()
}

/// The status code and body for an allocator error: 4xx for what the client got wrong,
/// 409 for conflicts, 503 for waits that ran out.
pub fn error_response(e: &IpamError) -> Response {
    let code = match e {
        IpamError::OutOfRange { .. }
        | IpamError::AddressOutOfRange { .. }
        | IpamError::BadIdent(_)
        | IpamError::TakeoverSelf => StatusCode::BAD_REQUEST,
        IpamError::NotFound(_) | IpamError::AddressNotHeld { .. } | IpamError::UnknownPeer(_) => {
            StatusCode::NOT_FOUND
        }
        IpamError::InUse { .. } | IpamError::OwnedByPeer { .. } | IpamError::PeerAlive(_) => {
            StatusCode::CONFLICT
        }
        IpamError::TimedOut { .. } | IpamError::StoreMismatch(_) => StatusCode::SERVICE_UNAVAILABLE,
        // Nobody is left to read it, but a proxy may log it.
        IpamError::Cancelled { .. } => StatusCode::from_u16(499).unwrap_or(StatusCode::GONE),
    };
    (code, format!("{e}\n")).into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

/// `?timeout=SECONDS`; anything else in the query (Weave's `check-alive`) is ignored.
fn wait_from(query: Option<&str>) -> Result<Duration, String> {
    let Some(q) = query else {
        return Ok(DEFAULT_WAIT);
    };
    let pairs = form::parse_urlencoded(q).map_err(|e| format!("bad query: {e}"))?;
    let Some((_, v)) = pairs.iter().rev().find(|(k, _)| k == "timeout") else {
        return Ok(DEFAULT_WAIT);
    };
    match v.parse::<u64>() {
        Ok(s) if (1..=MAX_WAIT.as_secs()).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "bad timeout '{v}': expected seconds from 1 to {}",
            MAX_WAIT.as_secs()
        )),
    }
}

/// A subnet from the path: `ip/plen` with the host bits zero.
fn subnet_from(ip: &str, plen: &str) -> Result<Cidr, String> {
    Cidr::parse_subnet(&format!("{ip}/{plen}"))
        .map_err(|e| format!("invalid subnet {ip}/{plen}: {e}"))
}

/// An address with its prefix length from the path.
fn cidr_from(ip: &str, plen: &str) -> Result<Cidr, String> {
    format!("{ip}/{plen}")
        .parse::<Cidr>()
        .map_err(|e| format!("invalid address {ip}/{plen}: {e}"))
}

/// Addresses separated by spaces, as Weave writes them.
fn addresses(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn allocate(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    do_allocate(st, id, None, q).await
}

async fn allocate_in(
    State(st): State<ApiState>,
    Path((id, ip, plen)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    match subnet_from(&ip, &plen) {
        Ok(subnet) => do_allocate(st, id, Some(subnet), q).await,
        Err(msg) => bad_request(msg),
    }
}

async fn do_allocate(
    st: ApiState,
    ident: String,
    subnet: Option<Cidr>,
    q: Option<String>,
) -> Response {
    let wait = match wait_from(q.as_deref()) {
        Ok(w) => w,
        Err(msg) => return bad_request(msg),
    };
    let answer = st
        .ipam(|reply| IpamRequest::Allocate {
            ident,
            subnet,
            wait,
            reply,
        })
        .await;
    match answer {
        Ok(Ok(cidr)) => cidr.to_string().into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(resp) => resp,
    }
}

async fn claim(
    State(st): State<ApiState>,
    Path((ident, ip, plen)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let cidr = match cidr_from(&ip, &plen) {
        Ok(c) => c,
        Err(msg) => return bad_request(msg),
    };
    let wait = match wait_from(q.as_deref()) {
        Ok(w) => w,
        Err(msg) => return bad_request(msg),
    };
    let answer = st
        .ipam(|reply| IpamRequest::Claim {
            ident,
            cidr,
            wait,
            reply,
        })
        .await;
    match answer {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(resp) => resp,
    }
}

async fn lookup(State(st): State<ApiState>, Path(ident): Path<String>) -> Response {
    do_lookup(st, ident, None).await
}

async fn lookup_in(
    State(st): State<ApiState>,
    Path((ident, ip, plen)): Path<(String, String, String)>,
) -> Response {
    match subnet_from(&ip, &plen) {
        Ok(subnet) => do_lookup(st, ident, Some(subnet)).await,
        Err(msg) => bad_request(msg),
    }
}

async fn do_lookup(st: ApiState, ident: String, subnet: Option<Cidr>) -> Response {
    let shown = ident.clone();
    match st
        .ipam(|reply| IpamRequest::Lookup {
            ident,
            subnet,
            reply,
        })
        .await
    {
        Ok(cidrs) if cidrs.is_empty() => {
            (StatusCode::NOT_FOUND, format!("no addresses for {shown}\n")).into_response()
        }
        Ok(cidrs) => addresses(&cidrs).into_response(),
        Err(resp) => resp,
    }
}

async fn release(State(st): State<ApiState>, Path(ident): Path<String>) -> Response {
    match st.ipam(|reply| IpamRequest::Release { ident, reply }).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(resp) => resp,
    }
}

async fn free(State(st): State<ApiState>, Path((ident, ip)): Path<(String, String)>) -> Response {
    let addr = match ip.parse::<Address>() {
        Ok(a) => a,
        Err(e) => return bad_request(format!("invalid address {ip}: {e}")),
    };
    match st
        .ipam(|reply| IpamRequest::Free { ident, addr, reply })
        .await
    {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(resp) => resp,
    }
}

async fn prime(State(st): State<ApiState>, RawQuery(q): RawQuery) -> Response {
    let wait = match wait_from(q.as_deref()) {
        Ok(w) => w,
        Err(msg) => return bad_request(msg),
    };
    match st.ipam(|reply| IpamRequest::Prime { wait, reply }).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(resp) => resp,
    }
}

async fn take_over(State(st): State<ApiState>, Path(peer): Path<String>) -> Response {
    let shown = peer.clone();
    match st.ipam(|reply| IpamRequest::TakeOver { peer, reply }).await {
        Ok(Ok(n)) => format!("{n} IPs taken over from {shown}\n").into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(resp) => resp,
    }
}

async fn list(State(st): State<ApiState>) -> Response {
    #[derive(Serialize)]
    struct Mapping {
        containerid: String,
        addrs: Vec<String>,
    }
    #[derive(Serialize)]
    struct Mappings {
        owned: Vec<Mapping>,
    }
    match st.ipam(|reply| IpamRequest::List { reply }).await {
        Ok(all) => {
            let owned = all
                .into_iter()
                .map(|(containerid, cidrs)| Mapping {
                    containerid,
                    addrs: cidrs.iter().map(ToString::to_string).collect(),
                })
                .collect();
            json_response(&Mappings { owned }, "allocations")
        }
        Err(resp) => resp,
    }
}

async fn default_subnet(State(st): State<ApiState>) -> Response {
    match st.ipam_status().await {
        Ok(Some(s)) => s.default_subnet.into_response(),
        Ok(None) => disabled(),
        Err(resp) => resp,
    }
}

async fn status_page(State(st): State<ApiState>) -> Response {
    let router = match st.snapshot().await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.ipam_status().await {
        Ok(Some(s)) => {
            super::text::render_ipam_ranges(&router.name.to_string(), &s).into_response()
        }
        Ok(None) => disabled(),
        Err(resp) => resp,
    }
}
