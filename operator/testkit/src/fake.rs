//! An in-memory stand-in for the Kubernetes API server, speaking its wire format (paths, query
//! parameters, JSON bodies, `Status` errors), for the tests and `awooop bench projection`:
//! no API server can run on the build machines.
//!
//! It keeps objects per collection and implements just what the operator sends: LIST with a
//! label selector, GET, server-side apply (PATCH `application/apply-patch+yaml`, also on
//! `/status`), JSON merge patch, DELETE honouring finalizers, POST and PUT (with
//! `resourceVersion` conflicts). Every request is recorded so a test can assert the exact
//! sequence the controller sent. It is deliberately not a full apiserver: SSA field ownership
//! is simplified to "the applied fields replace ours".

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Recorded {
    /// `"PATCH /apis/awooop.dev/v1alpha1/namespaces/ns/agentprojects/a"`: compact form for
    /// asserting call sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct State {
    /// collection path → name → object
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Recorded>,
    rv: u64,
    uid: u64,
}

/// The fake API server. Clone shares the same state.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

/// Split `/apis/g/v/namespaces/ns/plural/name/status` into (collection, name, subresource).
fn split(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // core: api/v1/namespaces/ns/plural ; groups: apis/g/v/namespaces/ns/plural
    let base = if parts.first() == Some(&"api") { 5 } else { 6 };
    let coll = parts[..base.min(parts.len())].join("/");
    let name = parts.get(base).map(|s| s.to_string());
    let sub = parts.get(base + 1).map(|s| s.to_string());
    (format!("/{coll}"), name, sub)
}

fn labels_match(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector else { return true };
    let labels = &obj["metadata"]["labels"];
    sel.split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels[k].as_str() == Some(v),
            None => !labels[term].is_null(),
        })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn list_kind(coll: &str) -> &'static str {
    match coll.rsplit('/').next().unwrap_or("") {
        "agentprojects" => "AgentProjectList",
        "mcpgrants" => "McpGrantList",
        "deployments" => "DeploymentList",
        "secrets" => "SecretList",
        "leases" => "LeaseList",
        "events" => "EventList",
        _ => "List",
    }
}

impl FakeApiServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `kube::Client` whose requests this fake answers in-process.
    pub fn client(&self, namespace: &str) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, namespace)
    }

    /// Put an object directly (test setup, or "someone else" editing the cluster).
    pub fn insert(&self, collection: &str, mut obj: Value) {
        let mut s = self.state.lock().expect("fake state");
        s.rv += 1;
        s.uid += 1;
        let rv = s.rv.to_string();
        let uid = format!("uid-{}", s.uid);
        let m = &mut obj["metadata"];
        m["resourceVersion"] = json!(rv);
        if m["uid"].is_null() {
            m["uid"] = json!(uid);
        }
        if m["generation"].is_null() {
            m["generation"] = json!(1);
        }
        let name = m["name"].as_str().unwrap_or_default().to_string();
        s.objects
            .entry(collection.to_string())
            .or_default()
            .insert(name, obj);
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().expect("fake state");
        s.objects.get(collection).and_then(|c| c.get(name)).cloned()
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        let s = self.state.lock().expect("fake state");
        s.objects
            .get(collection)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, collection: &str, name: &str) {
        let mut s = self.state.lock().expect("fake state");
        if let Some(c) = s.objects.get_mut(collection) {
            c.remove(name);
        }
    }

    /// Requests received so far (and forget them).
    pub fn take_log(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().expect("fake state").log)
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().expect("fake state").log.len()
    }

    /// Answer one request as the API server would.
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (decode(k), decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        let rec = Recorded {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
        };
        if rec
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
        {
            // Watches get no events from the fake: hold the request open (the caller's initial
            // LIST already filled its cache). Not recorded, so call sequences stay exact.
            std::future::pending::<()>().await;
        }
        let (code, value) = self.answer(&rec);
        self.state.lock().expect("fake state").log.push(rec);
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
            .expect("valid response")
    }

    fn answer(&self, r: &Recorded) -> (StatusCode, Value) {
        let (coll, name, sub) = split(&r.path);
        let mut s = self.state.lock().expect("fake state");
        s.rv += 1;
        let rv = s.rv.to_string();
        match (r.method.clone(), name) {
            (Method::GET, None) => {
                let items: Vec<Value> = s
                    .objects
                    .get(&coll)
                    .map(|c| {
                        c.values()
                            .filter(|o| labels_match(o, r.query.get("labelSelector")))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": list_kind(&coll),
                           "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            (Method::GET, Some(n)) => match s.objects.get(&coll).and_then(|c| c.get(&n)) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    status(404, "NotFound", &format!("{n} not found")),
                ),
            },
            (Method::PATCH, Some(n)) => {
                let body = r.body.clone().unwrap_or(json!({}));
                let apply = r
                    .content_type
                    .as_deref()
                    .is_some_and(|c| c.contains("apply-patch"));
                s.uid += 1;
                let uid = format!("uid-{}", s.uid);
                let coll_map = s.objects.entry(coll.clone()).or_default();
                let existing = coll_map.get(&n).cloned();
                if existing.is_none() && (!apply || sub.is_some()) {
                    return (
                        StatusCode::NOT_FOUND,
                        status(404, "NotFound", &format!("{n} not found")),
                    );
                }
                let mut obj = existing.clone().unwrap_or_else(|| {
                    json!({"metadata": {"uid": uid, "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}})
                });
                if sub.as_deref() == Some("status") {
                    obj["status"] = body["status"].clone();
                } else if apply {
                    let old_spec = obj["spec"].clone();
                    let keep = obj["metadata"].clone();
                    let status = obj["status"].clone();
                    obj = body.clone();
                    for k in [
                        "uid",
                        "generation",
                        "creationTimestamp",
                        "deletionTimestamp",
                    ] {
                        if !keep[k].is_null() {
                            obj["metadata"][k] = keep[k].clone();
                        }
                    }
                    if !status.is_null() {
                        obj["status"] = status;
                    }
                    if existing.is_some() && old_spec != obj["spec"] {
                        let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                        obj["metadata"]["generation"] = json!(g + 1);
                    }
                } else {
                    // A resourceVersion in a merge patch is a precondition, as on the API server.
                    let sent = body["metadata"]["resourceVersion"].as_str();
                    if sent.is_some() && sent != obj["metadata"]["resourceVersion"].as_str() {
                        return (
                            StatusCode::CONFLICT,
                            status(409, "Conflict", "the object has been modified"),
                        );
                    }
                    merge(&mut obj, &body);
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                let gone = !obj["metadata"]["deletionTimestamp"].is_null()
                    && obj["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty());
                if gone {
                    coll_map.remove(&n);
                } else {
                    coll_map.insert(n, obj.clone());
                }
                (StatusCode::OK, obj)
            }
            (Method::DELETE, Some(n)) => {
                let coll_map = s.objects.entry(coll).or_default();
                match coll_map.get_mut(&n) {
                    None => (
                        StatusCode::NOT_FOUND,
                        status(404, "NotFound", &format!("{n} not found")),
                    ),
                    Some(o) => {
                        let has_finalizers = o["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| !f.is_empty());
                        if has_finalizers {
                            o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
                            o["metadata"]["resourceVersion"] = json!(rv);
                            (StatusCode::OK, o.clone())
                        } else {
                            coll_map.remove(&n);
                            (
                                StatusCode::OK,
                                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                            )
                        }
                    }
                }
            }
            (Method::POST, None) => {
                let mut obj = r.body.clone().unwrap_or(json!({}));
                s.uid += 1;
                let uid = format!("uid-{}", s.uid);
                let name = match obj["metadata"]["name"].as_str() {
                    Some(n) => n.to_string(),
                    None => format!(
                        "{}{uid}",
                        obj["metadata"]["generateName"].as_str().unwrap_or("obj-")
                    ),
                };
                let coll_map = s.objects.entry(coll).or_default();
                if coll_map.contains_key(&name) {
                    return (
                        StatusCode::CONFLICT,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["uid"] = json!(uid);
                obj["metadata"]["resourceVersion"] = json!(rv);
                coll_map.insert(name, obj.clone());
                (StatusCode::CREATED, obj)
            }
            (Method::PUT, Some(n)) => {
                let mut obj = r.body.clone().unwrap_or(json!({}));
                let coll_map = s.objects.entry(coll).or_default();
                let Some(existing) = coll_map.get(&n) else {
                    return (
                        StatusCode::NOT_FOUND,
                        status(404, "NotFound", &format!("{n} not found")),
                    );
                };
                let sent = obj["metadata"]["resourceVersion"].as_str();
                if sent.is_some() && sent != existing["metadata"]["resourceVersion"].as_str() {
                    return (
                        StatusCode::CONFLICT,
                        status(409, "Conflict", "the object has been modified"),
                    );
                }
                obj["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                obj["metadata"]["resourceVersion"] = json!(rv);
                coll_map.insert(n, obj.clone());
                (StatusCode::OK, obj)
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed", "not supported by the fake"),
            ),
        }
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_collection_name_and_subresource() {
        assert_eq!(
            split("/apis/awooop.dev/v1alpha1/namespaces/ns/agentprojects/a/status"),
            (
                "/apis/awooop.dev/v1alpha1/namespaces/ns/agentprojects".into(),
                Some("a".into()),
                Some("status".into())
            )
        );
        assert_eq!(
            split("/api/v1/namespaces/ns/secrets"),
            ("/api/v1/namespaces/ns/secrets".into(), None, None)
        );
        assert_eq!(decode("a%3Db%2Cc"), "a=b,c");
    }
}
