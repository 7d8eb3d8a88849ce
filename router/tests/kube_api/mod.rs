//! A fake Kubernetes API server for the discovery tests: plain HTTP/1.1 on a socket the test
//! gives it, serving the few endpoints weave-router uses with the JSON the API server sends
//! (Node objects shaped like `kubectl get node -o json` from a kubeadm cluster, in
//! `tests/data/kube/node.json`):
//! - `GET /api/v1/nodes` (a list) and `GET /api/v1/nodes?watch=true&resourceVersion=N` (a
//!   chunked stream of `{"type":"ADDED|MODIFIED|DELETED","object":…}` lines, from N on);
//! - `PATCH /api/v1/nodes/{name}/status` (strategic merge of `status.conditions` by type);
//! - `GET`, `POST` and `PUT` of ConfigMaps in `kube-system`, where a `PUT` whose
//!   `metadata.resourceVersion` is not the current one is refused with 409 Conflict, as the
//!   API server's optimistic locking does.
//!
//! Every request must carry `Authorization: Bearer <token>`. The test changes Nodes with
//! [`FakeApi::add_node`], [`FakeApi::set_addresses`] and [`FakeApi::delete_node`], and reads
//! what the routers did from [`FakeApi::state`].

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Node template.
const NODE_JSON: &str = include_str!("../data/kube/node.json");

/// What the server holds and what it saw.
#[derive(Default)]
pub struct State {
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Value>,
    /// ConfigMaps of `kube-system` by name.
    pub configmaps: BTreeMap<String, Value>,
    /// Node watch events: (resourceVersion, JSON line).
    events: Vec<(u64, String)>,
    /// Every accepted ConfigMap write: (annotations before, annotations after).
    pub configmap_writes: Vec<(Value, Value)>,
    /// ConfigMap writes refused with 409 Conflict.
    pub conflicts: usize,
    /// Requests without the right token.
    pub unauthorized: usize,
}

/// The fake API server; stops serving on drop.
pub struct FakeApi {
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    token: String,
}

impl FakeApi {
    /// Serves on `listener` (already bound, in whatever namespace the test chose).
    pub fn serve(listener: TcpListener, token: &str) -> FakeApi {
        let api = FakeApi {
            state: Arc::new((Mutex::new(State::default()), Condvar::new())),
            stop: Arc::new(AtomicBool::new(false)),
            token: token.to_string(),
        };
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let (state, stop, token) = (
            Arc::clone(&api.state),
            Arc::clone(&api.stop),
            api.token.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (state, stop, token) =
                            (Arc::clone(&state), Arc::clone(&stop), token.clone());
                        thread::spawn(move || {
                            let _ = handle(conn, &state, &stop, &token);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        api
    }

    /// The state, locked.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.0.lock().expect("fake API state")
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.state.1.notify_all();
    }

    /// Adds Node `name` with `addresses` (type, address).
    pub fn add_node(&self, name: &str, addresses: &[(&str, &str)]) {
        let text = NODE_JSON.replace("NODE_NAME", name).replace(
            "NODE_UID",
            &format!("0c7d5e3a-{:04x}-4b2e-9f1a-6d8c2b4e7f10", name.len()),
        );
        let mut node: Value = serde_json::from_str(&text).expect("node template");
        node["status"]["addresses"] = addresses_json(name, addresses);
        self.change(|s| {
            stamp(s, &mut node);
            s.nodes.insert(name.to_string(), node.clone());
            push_event(s, "ADDED", &node);
        });
    }

    /// Replaces Node `name`'s addresses.
    pub fn set_addresses(&self, name: &str, addresses: &[(&str, &str)]) {
        self.change(|s| {
            let mut node = s.nodes.get(name).expect("node exists").clone();
            node["status"]["addresses"] = addresses_json(name, addresses);
            stamp(s, &mut node);
            s.nodes.insert(name.to_string(), node.clone());
            push_event(s, "MODIFIED", &node);
        });
    }

    /// Deletes Node `name`.
    pub fn delete_node(&self, name: &str) {
        self.change(|s| {
            let mut node = s.nodes.remove(name).expect("node exists");
            stamp(s, &mut node);
            push_event(s, "DELETED", &node);
        });
    }

    /// Node `name`'s condition of `type`, if set.
    pub fn condition(&self, name: &str, kind: &str) -> Option<Value> {
        let s = self.state();
        s.nodes.get(name)?["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
    }

    /// The annotations of ConfigMap `kube-system/name`.
    pub fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        let s = self.state();
        s.configmaps
            .get(name)
            .and_then(|cm| cm["metadata"]["annotations"].as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.1.notify_all();
    }
}

fn addresses_json(name: &str, addresses: &[(&str, &str)]) -> Value {
    let mut list: Vec<Value> = addresses
        .iter()
        .map(|(kind, addr)| json!({"type": kind, "address": addr}))
        .collect();
    list.push(json!({"type": "Hostname", "address": name}));
    Value::Array(list)
}

/// Gives `obj` the next resourceVersion.
fn stamp(s: &mut State, obj: &mut Value) {
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
}

fn push_event(s: &mut State, kind: &str, node: &Value) {
    let line = json!({"type": kind, "object": node}).to_string();
    s.events.push((s.rv, line));
}

/// One request: method, path, query, headers (lower-case names), body.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    }))
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

/// The API server's error object.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

const CONFIGMAPS: &str = "/api/v1/namespaces/kube-system/configmaps";

fn handle(
    conn: TcpStream,
    shared: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
    token: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    // Keep-alive: one request after another until the client closes.
    while let Some(req) = read_request(&mut reader)? {
        if req.headers.get("authorization") != Some(&format!("Bearer {token}")) {
            shared.0.lock().unwrap().unauthorized += 1;
            respond(&mut conn, 401, &status(401, "Unauthorized", "Unauthorized"))?;
            continue;
        }
        let watch = matches!(
            req.query.get("watch").map(String::as_str),
            Some("true" | "1")
        );
        if req.method == "GET" && req.path == "/api/v1/nodes" && watch {
            return stream_watch(conn, &req, shared, stop);
        }
        let (code, body) = route(&req, shared);
        respond(&mut conn, code, &body)?;
    }
    Ok(())
}

fn route(req: &Request, shared: &(Mutex<State>, Condvar)) -> (u16, Value) {
    let mut s = shared.0.lock().unwrap();
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let cm_name = req
        .path
        .strip_prefix(CONFIGMAPS)
        .and_then(|r| r.strip_prefix('/'));
    let node_status = req
        .path
        .strip_prefix("/api/v1/nodes/")
        .and_then(|r| r.strip_suffix("/status"));
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/v1/nodes") => {
            let items: Vec<Value> = s.nodes.values().cloned().collect();
            (
                200,
                json!({"kind": "NodeList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        ("PATCH", _) if node_status.is_some() => {
            let name = node_status.unwrap_or_default().to_string();
            let Some(mut node) = s.nodes.get(&name).cloned() else {
                return (
                    404,
                    status(404, "NotFound", &format!("nodes \"{name}\" not found")),
                );
            };
            for c in body["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let list = node["status"]["conditions"]
                    .as_array_mut()
                    .expect("conditions");
                match list.iter_mut().find(|old| old["type"] == c["type"]) {
                    Some(old) => *old = c,
                    None => list.push(c),
                }
            }
            stamp(&mut s, &mut node);
            s.nodes.insert(name, node.clone());
            push_event(&mut s, "MODIFIED", &node);
            shared.1.notify_all();
            (200, node)
        }
        ("GET", _) if cm_name.is_some() => {
            let name = cm_name.unwrap_or_default();
            match s.configmaps.get(name) {
                Some(cm) => (200, cm.clone()),
                None => (
                    404,
                    status(404, "NotFound", &format!("configmaps \"{name}\" not found")),
                ),
            }
        }
        ("POST", CONFIGMAPS) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if s.configmaps.contains_key(&name) {
                return (
                    409,
                    status(
                        409,
                        "AlreadyExists",
                        &format!("configmaps \"{name}\" already exists"),
                    ),
                );
            }
            let mut cm = body.clone();
            cm["kind"] = json!("ConfigMap");
            cm["apiVersion"] = json!("v1");
            cm["metadata"]["uid"] = json!("3f1e8a2c-5b7d-4e9f-a1c3-7d2b6e8f0a14");
            stamp(&mut s, &mut cm);
            s.configmaps.insert(name, cm.clone());
            (201, cm)
        }
        ("PUT", _) if cm_name.is_some() => {
            let name = cm_name.unwrap_or_default().to_string();
            let Some(current) = s.configmaps.get(&name).cloned() else {
                return (
                    404,
                    status(404, "NotFound", &format!("configmaps \"{name}\" not found")),
                );
            };
            if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                s.conflicts += 1;
                return (
                    409,
                    status(
                        409,
                        "Conflict",
                        &format!(
                            "Operation cannot be fulfilled on configmaps \"{name}\": the object \
                             has been modified; please apply your changes to the latest version \
                             and try again"
                        ),
                    ),
                );
            }
            let mut cm = body.clone();
            stamp(&mut s, &mut cm);
            let before = current["metadata"]["annotations"].clone();
            let after = cm["metadata"]["annotations"].clone();
            s.configmap_writes.push((before, after));
            s.configmaps.insert(name, cm.clone());
            (200, cm)
        }
        _ => (
            404,
            status(
                404,
                "NotFound",
                &format!("the server could not find {}", req.path),
            ),
        ),
    }
}

/// A watch: every Node event after the asked resourceVersion, as chunks, until the client
/// goes, `timeoutSeconds` pass or the server stops.
fn stream_watch(
    mut conn: TcpStream,
    req: &Request,
    shared: &(Mutex<State>, Condvar),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut sent: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    conn.flush()?;
    let start = Instant::now();
    let mut guard = shared.0.lock().unwrap();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < timeout {
        let lines: Vec<(u64, String)> = guard
            .events
            .iter()
            .filter(|(rv, _)| *rv > sent)
            .cloned()
            .collect();
        if !lines.is_empty() {
            drop(guard);
            for (rv, line) in lines {
                let chunk = format!("{line}\n");
                write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len())?;
                sent = rv;
            }
            conn.flush()?;
            guard = shared.0.lock().unwrap();
            continue;
        }
        guard = shared
            .1
            .wait_timeout(guard, Duration::from_millis(200))
            .unwrap()
            .0;
    }
    drop(guard);
    write!(conn, "0\r\n\r\n")?;
    conn.flush()
}
