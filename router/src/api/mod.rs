//! The HTTP control API (loopback only; it is unauthenticated) and the metrics endpoint.
//!
//! Handlers never touch the mesh: they send an [`ApiRequest`] to the task that owns it and
//! wait for the reply, then render with the pure functions in [`text`] and [`metrics`].

pub mod form;
pub mod ipam;
pub mod metrics;
pub mod stats;
pub mod text;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::PeerAddr;
use crate::dataplane::engine::DataplaneCounters;
use crate::mesh::status::{DataplaneStatus, Report, RouterStatus};
use crate::mesh::DirectPeer;
use std::sync::Arc;

/// The version reported by `/report` and `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A question or order for the task that owns the mesh.
#[derive(Debug)]
pub enum ApiRequest {
    /// Send back a status snapshot.
    Status {
        /// Where to send it.
        reply: oneshot::Sender<RouterStatus>,
    },
    /// Send back a status snapshot with the round-trip times of the connections.
    Stats {
        /// Where to send it.
        reply: oneshot::Sender<MeshSnapshot>,
    },
    /// Add connection targets (`POST /connect`).
    Connect {
        /// Resolved peers.
        addrs: Vec<DirectPeer>,
        /// Drop the previous targets first.
        replace: bool,
        /// Answered once the mesh has them.
        reply: oneshot::Sender<()>,
    },
    /// Remove connection targets (`POST /forget`).
    Forget {
        /// Resolved peers.
        addrs: Vec<DirectPeer>,
        /// Answered once the mesh has dropped them.
        reply: oneshot::Sender<()>,
    },
    /// Address management.
    Ipam(ipam::IpamRequest),
}

/// The mesh owner's answer to [`ApiRequest::Stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSnapshot {
    /// The status snapshot.
    pub router: RouterStatus,
    /// Round-trip summaries by remote TCP address of the connection.
    pub rtt: BTreeMap<String, crate::mesh::rtt::RttSummary>,
}

/// What the handlers share: the way to the mesh owner and the mesh port (the default port of
/// peers given without one).
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Requests to the mesh owner.
    pub requests: mpsc::Sender<ApiRequest>,
    /// The mesh port.
    pub port: u16,
    /// The data plane's workers' counters (read without asking the workers).
    pub dataplane: Option<Arc<DataplaneCounters>>,
    /// When the router started: the origin of `/stats` timestamps.
    pub started: Instant,
    /// Whether address management runs.
    pub ipam: bool,
}

/// The routes served on the HTTP address.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/status/peers", get(peers))
        .route("/status/connections", get(connections))
        .route("/status/targets", get(targets))
        .route("/report", get(report))
        .route("/stats", get(stats_page))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .merge(ipam::routes())
        .with_state(state)
}

/// The routes served on the metrics address.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves a configured peer to one socket address, preferring IPv4 as Weave does.
pub async fn resolve(peer: &PeerAddr) -> Result<SocketAddr, String> {
    match peer {
        PeerAddr::Ip(addr) => Ok(*addr),
        PeerAddr::Host { host, port } => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| format!("cannot resolve '{host}': {e}"))?
                .collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied()
                .ok_or_else(|| format!("cannot resolve '{host}': no addresses"))
        }
    }
}

impl ApiState {
    async fn snapshot(&self) -> Result<RouterStatus, Response> {
        let (reply, rx) = oneshot::channel();
        if self
            .requests
            .send(ApiRequest::Status { reply })
            .await
            .is_err()
        {
            return Err(unavailable());
        }
        rx.await.map_err(|_| unavailable())
    }

    async fn mesh_snapshot(&self) -> Result<MeshSnapshot, Response> {
        let (reply, rx) = oneshot::channel();
        if self
            .requests
            .send(ApiRequest::Stats { reply })
            .await
            .is_err()
        {
            return Err(unavailable());
        }
        rx.await.map_err(|_| unavailable())
    }

    /// The data plane's counters, loaded from the workers' atomics now.
    fn dataplane_status(&self) -> Option<DataplaneStatus> {
        self.dataplane.as_ref().map(|d| DataplaneStatus {
            backend: d.backend.to_string(),
            workers: d.workers.iter().map(|c| c.status()).collect(),
        })
    }

    /// The `/stats` document; the counters are read after the mesh answered, so the
    /// timestamp is as close to them as it can be.
    async fn stats(&self) -> Result<(RouterStatus, stats::Stats), Response> {
        let snapshot = self.mesh_snapshot().await?;
        let dataplane = self.dataplane_status();
        let monotonic_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let stats = stats::build(stats::StatsInput {
            version: VERSION,
            router: &snapshot.router,
            dataplane: dataplane.as_ref(),
            rtt: &snapshot.rtt,
            monotonic_ns,
        });
        Ok((snapshot.router, stats))
    }

    /// Parses and resolves `peer` fields; returns the good addresses and the errors.
    async fn resolve_peers(&self, peers: &[String]) -> (Vec<DirectPeer>, Vec<String>) {
        let mut addrs = Vec::new();
        let mut errors = Vec::new();
        for p in peers {
            let resolved = match PeerAddr::parse(p, self.port) {
                Ok(peer) => resolve(&peer)
                    .await
                    .map(|addr| DirectPeer::new(p.clone(), addr, self.port)),
                Err(e) => Err(format!("{e}, should be host[:port]")),
            };
            match resolved {
                Ok(a) => addrs.push(a),
                Err(e) => errors.push(e),
            }
        }
        (addrs, errors)
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "weave-router is shutting down\n",
    )
        .into_response()
}

async fn status(State(st): State<ApiState>) -> Response {
    let router = match st.snapshot().await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match st.ipam_status().await {
        Ok(ipam) => text::render_status(VERSION, &router, ipam.as_ref()).into_response(),
        Err(resp) => resp,
    }
}

async fn peers(State(st): State<ApiState>) -> Response {
    match st.snapshot().await {
        Ok(r) => text::render_peers(&r).into_response(),
        Err(resp) => resp,
    }
}

async fn connections(State(st): State<ApiState>) -> Response {
    match st.snapshot().await {
        Ok(r) => text::render_connections(&r).into_response(),
        Err(resp) => resp,
    }
}

async fn targets(State(st): State<ApiState>) -> Response {
    match st.snapshot().await {
        Ok(r) => text::render_targets(&r).into_response(),
        Err(resp) => resp,
    }
}

async fn report(State(st): State<ApiState>) -> Response {
    let router = match st.snapshot().await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let ipam = match st.ipam_status().await {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    let dataplane = st.dataplane_status();
    let report = Report {
        ready: true,
        version: VERSION.to_string(),
        router,
        ipam,
        dataplane,
    };
    json_response(&report, "report")
}

/// `value` as pretty JSON, or a 500 naming `what` could not be encoded.
fn json_response<T: Serialize>(value: &T, what: &str) -> Response {
    match to_json_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode {what}: {e}\n"),
        )
            .into_response(),
    }
}

async fn stats_page(State(st): State<ApiState>) -> Response {
    let stats = match st.stats().await {
        Ok((_, s)) => s,
        Err(resp) => return resp,
    };
    json_response(&stats, "stats")
}

async fn metrics_page(State(st): State<ApiState>) -> Response {
    let (router, stats) = match st.stats().await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let ipam = match st.ipam_status().await {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render_metrics(metrics::Scrape {
            router,
            stats,
            ipam,
        }),
    )
        .into_response()
}

async fn connect(State(st): State<ApiState>, RawQuery(query): RawQuery, body: String) -> Response {
    let form = match form::PeerForm::parse(query.as_deref().unwrap_or(""), &body) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unable to parse form: {e}\n"),
            )
                .into_response()
        }
    };
    let (addrs, errors) = st.resolve_peers(&form.peers).await;
    // Like Weave, the good addresses are taken even when others are refused.
    let (reply, rx) = oneshot::channel();
    let req = ApiRequest::Connect {
        addrs,
        replace: form.replace,
        reply,
    };
    if st.requests.send(req).await.is_err() || rx.await.is_err() {
        return unavailable();
    }
    errors_response(errors)
}

async fn forget(State(st): State<ApiState>, RawQuery(query): RawQuery, body: String) -> Response {
    let form = match form::PeerForm::parse(query.as_deref().unwrap_or(""), &body) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unable to parse form: {e}\n"),
            )
                .into_response()
        }
    };
    let (addrs, errors) = st.resolve_peers(&form.peers).await;
    let (reply, rx) = oneshot::channel();
    if st
        .requests
        .send(ApiRequest::Forget { addrs, reply })
        .await
        .is_err()
        || rx.await.is_err()
    {
        return unavailable();
    }
    errors_response(errors)
}

fn errors_response(errors: Vec<String>) -> Response {
    if errors.is_empty() {
        return StatusCode::OK.into_response();
    }
    let mut body = errors.join("\n");
    body.push('\n');
    (StatusCode::BAD_REQUEST, body).into_response()
}

/// JSON indented with four spaces, as Weave's `/report` is.
pub fn to_json_pretty<T: Serialize>(v: &T) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)?;
    // serde_json writes only valid UTF-8.
    Ok(String::from_utf8_lossy(&out).into_owned())
}
