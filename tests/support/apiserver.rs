//! An in-process Kubernetes API server for tests: plain HTTP on 127.0.0.1, an in-memory object
//! store, and enough of the API for `kubectl` and kube-rs (discovery, CRUD, watch, the status
//! subresource, merge/strategic/apply patches, label and field selectors, resourceVersion
//! conflicts, finalizers, ownerReference garbage collection and server-side Tables).
//!
//! The server runs on its own thread with its own Tokio runtime, so tests may block (e.g. run
//! `kubectl`) without starving it. Dropping the [`ApiServer`] stops it.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, oneshot};

/// How many change events are kept for watches that resume from a resourceVersion.
const HISTORY: usize = 10_000;

type Body = BoxBody<Bytes, Infallible>;

/// A running test API server. See the module documentation.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 with a free port and writes its kubeconfig.
    pub fn start() -> ApiServer {
        let state = Arc::new(State::new());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve(listener, st, rx));
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server = ApiServer {
            addr,
            state,
            dir,
            shutdown: Some(tx),
            thread: Some(thread),
        };
        std::fs::write(server.kubeconfig_path(), server.kubeconfig()).unwrap();
        std::fs::create_dir_all(server.cache_dir()).unwrap();
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Text of a kubeconfig pointing at this server (no authentication, namespace default).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    /// A kubeconfig whose user sends `Authorization: Bearer <token>`, so that the requests of
    /// one client (e.g. the controller) can be told apart in [`ApiServer::requests_of`].
    pub fn kubeconfig_with_token(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{token}"));
        let text = self
            .kubeconfig()
            .replace("  user: {}\n", &format!("  user:\n    token: {token}\n"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The resource requests made with bearer `token`: (verb, group, resource[/subresource],
    /// namespace), verbs as RBAC names them (get, list, watch, create, update, patch, delete,
    /// deletecollection).
    pub fn requests_of(&self, token: &str) -> Vec<RequestRecord> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == token)
            .map(|r| r.1.clone())
            .collect()
    }

    /// Path of the kubeconfig file written at start, for `kubectl --kubeconfig`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A discovery cache directory private to this server, for `kubectl --cache-dir`.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("kube-cache")
    }

    /// A kube-rs client for this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).expect("kube client")
    }

    /// A `kubectl` command with `--kubeconfig` and `--cache-dir` set for this server.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.cache_dir());
        cmd
    }

    /// Runs `kubectl <args>` against this server and returns its output (not checked).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command()
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs `kubectl <args>`, panics unless it succeeds, and returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The stored object, if any (`group` "" for the core group; `namespace` "" when
    /// cluster-scoped).
    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.state.store.lock().unwrap();
        store
            .objects
            .get(&key(group, resource, namespace, name))
            .cloned()
    }

    /// All stored objects of a resource (all namespaces).
    pub fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        let store = self.state.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|(k, _)| k.0 == group && k.1 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Adds a (cluster-scoped) Node with the given allocatable (and capacity) CPU and memory,
    /// e.g. `add_node("node-a", "2", "8Gi")`, as a kubelet would register it.
    pub fn add_node(&self, name: &str, cpu: &str, memory: &str) -> Value {
        let info = info_builtin("", "nodes").unwrap();
        let mut store = self.state.store.lock().unwrap();
        let created = create(
            &self.state,
            &mut store,
            &info,
            "",
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        )
        .unwrap_or_else(|_| panic!("node {name} cannot be created (does it exist?)"));
        let mut node = created;
        let resources = json!({"cpu": cpu, "memory": memory, "pods": "110"});
        node["status"] = json!({
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastTransitionTime": now_rfc3339()}],
        });
        self.state.insert(&mut store, &info, "", node)
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().unwrap().rv
    }

    /// Serves `kubectl logs <pod>` from `logs` (the kubelet stand-in registers itself here).
    pub fn set_pod_logs(&self, logs: PodLogs) {
        *self.state.pod_logs.lock().unwrap() = Some(logs);
    }

    /// Forgets the watch history, so that watches from any older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        let mut store = self.state.store.lock().unwrap();
        store.history.clear();
        store.compacted = store.rv;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let st = state.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store

/// (group, resource, namespace, name); the version is not part of the key (objects are served
/// at whatever version is asked for).
type Key = (String, String, String, String);

fn key(group: &str, resource: &str, ns: &str, name: &str) -> Key {
    (group.into(), resource.into(), ns.into(), name.into())
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    group: String,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
    /// The previous version, for MODIFIED: a watch with a selector turns a change that makes an
    /// object stop (start) matching into DELETED (ADDED), as a real server does.
    previous: Option<Value>,
}

struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
}

/// Source of `GET …/pods/<name>/log`: (namespace, pod name) → the log text, if known.
pub type PodLogs = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// One resource request, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestRecord {
    /// get, list, watch, create, update, patch, delete or deletecollection.
    pub verb: String,
    /// API group ("" for the core group).
    pub group: String,
    /// Plural, with `/subresource` when there is one.
    pub resource: String,
    /// Namespace ("" when cluster-scoped or across all namespaces).
    pub namespace: String,
}

struct State {
    /// (bearer token, request) of every resource request.
    requests: Mutex<Vec<(String, RequestRecord)>>,
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    pod_logs: Mutex<Option<PodLogs>>,
}

impl State {
    fn new() -> State {
        let (events, _) = broadcast::channel(HISTORY);
        let state = State {
            store: Mutex::new(Store {
                rv: 0,
                uid: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
            }),
            events,
            pod_logs: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        };
        {
            let mut store = state.store.lock().unwrap();
            for ns in ["default", "kube-system", "kube-public"] {
                let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                                 "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
                state.insert(
                    &mut store,
                    &info_builtin("", "namespaces").unwrap(),
                    "",
                    obj,
                );
            }
        }
        state
    }

    /// Stores a new version of an object, stamping resourceVersion, and records the event.
    fn insert(&self, store: &mut Store, info: &ResInfo, ns: &str, mut obj: Value) -> Value {
        let name = name_of(&obj);
        let k = key(&info.group, &info.plural, ns, &name);
        store.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        let previous = store.objects.insert(k, obj.clone());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(store, info, ns, kind, obj.clone(), previous);
        obj
    }

    fn record(
        &self,
        store: &mut Store,
        info: &ResInfo,
        ns: &str,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let ev = Arc::new(Event {
            rv: store.rv,
            group: info.group.clone(),
            resource: info.plural.clone(),
            namespace: ns.to_string(),
            kind,
            object,
            previous,
        });
        if store.history.len() >= HISTORY
            && let Some(old) = store.history.pop_front()
        {
            store.compacted = old.rv;
        }
        store.history.push_back(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Removes an object for good (no finalizers left) and garbage-collects its dependents.
    fn remove(&self, store: &mut Store, group: &str, resource: &str, ns: &str, name: &str) {
        let Some(mut obj) = store.objects.remove(&key(group, resource, ns, name)) else {
            return;
        };
        let info =
            lookup(store, group, resource).unwrap_or_else(|| ResInfo::unknown(group, resource));
        store.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        self.record(store, &info, ns, "DELETED", obj.clone(), None);
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dependents: Vec<Key> = store
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            self.delete(store, &k.0, &k.1, &k.2, &k.3);
        }
    }

    /// Deletes: marks with deletionTimestamp when finalizers remain, else removes.
    fn delete(
        &self,
        store: &mut Store,
        group: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        let k = key(group, resource, ns, name);
        let mut obj = store.objects.get(&k)?.clone();
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers && resource != "namespaces" {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                let info = lookup(store, group, resource)
                    .unwrap_or_else(|| ResInfo::unknown(group, resource));
                return Some(self.insert(store, &info, ns, obj));
            }
            return Some(obj);
        }
        self.remove(store, group, resource, ns, name);
        Some(obj)
    }
}

// ---------------------------------------------------------------------------------------------
// Resource registry

#[derive(Clone, Debug)]
struct ResInfo {
    group: String,
    version: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    short_names: Vec<String>,
    status: bool,
    columns: Vec<Value>,
    categories: Vec<String>,
}

impl ResInfo {
    fn unknown(group: &str, resource: &str) -> ResInfo {
        ResInfo {
            group: group.into(),
            version: String::new(),
            plural: resource.into(),
            singular: String::new(),
            kind: String::new(),
            namespaced: true,
            short_names: vec![],
            status: false,
            columns: vec![],
            categories: vec![],
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// (group, version, plural, kind, namespaced, short names, status subresource)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

const BUILTINS: &[Builtin] = &[
    ("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
    ("", "v1", "secrets", "Secret", true, &[], false),
    ("", "v1", "pods", "Pod", true, &["po"], true),
    ("", "v1", "services", "Service", true, &["svc"], true),
    ("", "v1", "events", "Event", true, &["ev"], false),
    ("", "v1", "namespaces", "Namespace", false, &["ns"], true),
    ("", "v1", "nodes", "Node", false, &["no"], true),
    (
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    ),
    ("batch", "v1", "jobs", "Job", true, &[], true),
    (
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    ),
    ("events.k8s.io", "v1", "events", "Event", true, &[], false),
];

fn info_builtin(group: &str, resource: &str) -> Option<ResInfo> {
    BUILTINS
        .iter()
        .find(|b| b.0 == group && b.2 == resource)
        .map(|b| ResInfo {
            group: b.0.into(),
            version: b.1.into(),
            plural: b.2.into(),
            singular: b.3.to_lowercase(),
            kind: b.3.into(),
            namespaced: b.4,
            short_names: b.5.iter().map(|s| s.to_string()).collect(),
            status: b.6,
            columns: builtin_columns(b.2),
            categories: if ["pods", "services", "jobs"].contains(&b.2) {
                vec!["all".to_string()]
            } else {
                vec![]
            },
        })
}

/// Table columns of built-in kinds (after NAME). A jsonPath starting with `@` is computed.
fn builtin_columns(plural: &str) -> Vec<Value> {
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    match plural {
        "pods" => vec![
            json!({"name": "Ready", "type": "string", "jsonPath": "@ready"}),
            json!({"name": "Status", "type": "string", "jsonPath": ".status.phase"}),
            json!({"name": "Restarts", "type": "integer", "jsonPath": "@restarts"}),
            age,
            json!({"name": "IP", "type": "string", "jsonPath": ".status.podIP", "priority": 1}),
            json!({"name": "Node", "type": "string", "jsonPath": ".spec.nodeName", "priority": 1}),
        ],
        "jobs" => vec![
            json!({"name": "Status", "type": "string", "jsonPath": "@jobstatus"}),
            json!({"name": "Completions", "type": "string", "jsonPath": "@completions"}),
            age,
        ],
        "configmaps" => vec![
            json!({"name": "Data", "type": "integer", "jsonPath": "@data"}),
            age,
        ],
        _ => vec![age],
    }
}

/// Computed cells of [`builtin_columns`].
fn computed_cell(path: &str, item: &Value) -> Value {
    let status = &item["status"];
    match path {
        "@ready" => {
            let total = item["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = status["containerStatuses"].as_array().map_or(0, |cs| {
                cs.iter().filter(|c| c["ready"] == json!(true)).count()
            });
            json!(format!("{ready}/{total}"))
        }
        "@restarts" => json!(0),
        "@jobstatus" => {
            let conds = status["conditions"].as_array().cloned().unwrap_or_default();
            let done = ["Complete", "Failed"].into_iter().find(|t| {
                conds
                    .iter()
                    .any(|c| c["type"] == json!(t) && c["status"] == json!("True"))
            });
            json!(done.unwrap_or("Running"))
        }
        "@completions" => {
            let succeeded = status["succeeded"].as_i64().unwrap_or(0);
            let completions = item["spec"]["completions"].as_i64().unwrap_or(1);
            json!(format!("{succeeded}/{completions}"))
        }
        "@data" => {
            let n = item["data"].as_object().map_or(0, Map::len)
                + item["binaryData"].as_object().map_or(0, Map::len);
            json!(n)
        }
        _ => Value::Null,
    }
}

/// Every served version of every registered CRD.
fn crd_infos(store: &Store) -> Vec<ResInfo> {
    let mut out = vec![];
    for (k, crd) in &store.objects {
        if k.0 != "apiextensions.k8s.io" || k.1 != "customresourcedefinitions" {
            continue;
        }
        let spec = &crd["spec"];
        let names = &spec["names"];
        let Some(versions) = spec["versions"].as_array() else {
            continue;
        };
        for v in versions {
            if v["served"] == json!(false) {
                continue;
            }
            out.push(ResInfo {
                group: spec["group"].as_str().unwrap_or_default().into(),
                version: v["name"].as_str().unwrap_or_default().into(),
                plural: names["plural"].as_str().unwrap_or_default().into(),
                singular: names["singular"].as_str().unwrap_or_default().into(),
                kind: names["kind"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"] != json!("Cluster"),
                short_names: names["shortNames"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                status: !v["subresources"]["status"].is_null(),
                columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                categories: names["categories"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    out
}

fn all_infos(store: &Store) -> Vec<ResInfo> {
    let mut out: Vec<ResInfo> = BUILTINS
        .iter()
        .map(|b| info_builtin(b.0, b.2).unwrap())
        .collect();
    out.extend(crd_infos(store));
    out
}

fn lookup(store: &Store, group: &str, resource: &str) -> Option<ResInfo> {
    info_builtin(group, resource).or_else(|| {
        crd_infos(store)
            .into_iter()
            .find(|i| i.group == group && i.plural == resource)
    })
}

fn lookup_version(store: &Store, group: &str, version: &str, resource: &str) -> Option<ResInfo> {
    all_infos(store)
        .into_iter()
        .find(|i| i.group == group && i.version == version && i.plural == resource)
}

// ---------------------------------------------------------------------------------------------
// HTTP handling

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn ok(body: &Value) -> Response<Body> {
    respond(StatusCode::OK, body)
}

fn status_error(code: StatusCode, reason: &str, message: String, details: Value) -> Response<Body> {
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "details": details, "code": code.as_u16()}),
    )
}

fn not_found(info: &ResInfo, name: &str) -> Response<Body> {
    let what = qualified(info);
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{what} \"{name}\" not found"),
        json!({"name": name, "group": info.group, "kind": info.plural}),
    )
}

fn qualified(info: &ResInfo) -> String {
    if info.group.is_empty() {
        info.plural.clone()
    } else {
        format!("{}.{}", info.plural, info.group)
    }
}

fn path_not_found(path: &str) -> Response<Body> {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
        json!({}),
    )
}

fn bad_request(message: String) -> Response<Body> {
    status_error(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let accept = header("accept");
    let content_type = header("content-type");
    let token = header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_request(format!("reading body: {e}")),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rq = Req {
        method,
        query,
        accept,
        content_type,
        body,
        token,
    };
    match segs.as_slice() {
        ["version"] => ok(
            &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-stampede-test",
                                  "platform": "linux/amd64"}),
        ),
        ["healthz"] | ["livez"] | ["readyz"] => Response::new(Full::new(Bytes::from("ok")).boxed()),
        ["api"] => ok(&json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["apis"] => {
            let store = state.store.lock().unwrap();
            ok(&group_list(&store))
        }
        ["api", "v1"] => {
            let store = state.store.lock().unwrap();
            ok(&resource_list(&store, "", "v1"))
        }
        ["apis", group] => {
            let store = state.store.lock().unwrap();
            match group_list(&store)["groups"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["name"] == json!(group))
            {
                Some(g) => {
                    let mut g = g.clone();
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    ok(&g)
                }
                None => path_not_found(&path),
            }
        }
        ["apis", group, version] => {
            let store = state.store.lock().unwrap();
            let list = resource_list(&store, group, version);
            if list["resources"].as_array().unwrap().is_empty() {
                path_not_found(&path)
            } else {
                ok(&list)
            }
        }
        ["openapi", "v3"] => {
            let store = state.store.lock().unwrap();
            ok(&openapi_v3_root(&store))
        }
        ["openapi", "v3", "api", "v1"] => {
            let store = state.store.lock().unwrap();
            ok(&openapi_v3_doc(&store, "", "v1"))
        }
        ["openapi", "v3", "apis", group, version] => {
            let store = state.store.lock().unwrap();
            ok(&openapi_v3_doc(&store, group, version))
        }
        ["api", "v1", rest @ ..] => resource_request(&state, "", "v1", rest, rq).await,
        ["apis", group, version, rest @ ..] => {
            resource_request(&state, group, version, rest, rq).await
        }
        _ => path_not_found(&path),
    }
}

/// The OpenAPI v3 discovery document: one entry per group-version.
fn openapi_v3_root(store: &Store) -> Value {
    let mut paths = Map::new();
    for info in all_infos(store) {
        let p = if info.group.is_empty() {
            "api/v1".to_string()
        } else {
            format!("apis/{}/{}", info.group, info.version)
        };
        let url = format!("/openapi/v3/{p}?hash={:016X}", store.rv);
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// A minimal OpenAPI v3 document of a group-version: one PATCH operation per kind, tagged with
/// its group-version-kind and the `fieldValidation` parameter, which is what kubectl looks for
/// to use server-side field validation (and so skip client-side schema validation). No schemas:
/// kubectl then builds strategic merge patches from its compiled-in types.
fn openapi_v3_doc(store: &Store, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for info in all_infos(store) {
        if info.group != group || info.version != version {
            continue;
        }
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural)
        } else {
            format!("{prefix}/{}/{{name}}", info.plural)
        };
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
        ]);
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", info.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": info.kind}
            }}),
        );
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
           "paths": paths, "components": {"schemas": {}}})
}

struct Req {
    method: Method,
    query: BTreeMap<String, String>,
    accept: String,
    content_type: String,
    body: Bytes,
    token: String,
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = vec![];
    for info in all_infos(store) {
        if info.group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == info.group) {
            Some(g) => {
                if !g.1.contains(&info.version) {
                    g.1.push(info.version.clone());
                }
            }
            None => groups.push((info.group.clone(), vec![info.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources = vec![];
    for info in all_infos(store) {
        if info.group != group || info.version != version {
            continue;
        }
        let mut r = json!({"name": info.plural, "singularName": info.singular, "namespaced": info.namespaced,
                           "kind": info.kind, "verbs": verbs});
        if !info.short_names.is_empty() {
            r["shortNames"] = json!(info.short_names);
        }
        if !info.categories.is_empty() {
            r["categories"] = json!(info.categories);
        }
        resources.push(r);
        if info.status {
            resources.push(json!({"name": format!("{}/status", info.plural), "singularName": "",
                "namespaced": info.namespaced, "kind": info.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

async fn resource_request(
    state: &Arc<State>,
    group: &str,
    version: &str,
    rest: &[&str],
    rq: Req,
) -> Response<Body> {
    // /namespaces/{ns}/{resource}... (except GET/PUT/... of a namespace itself).
    let (ns, resource, name, sub) = match rest {
        ["namespaces", ns, resource, more @ ..] => {
            if group.is_empty() && *resource == "status" && more.is_empty() {
                ("", "namespaces", Some(*ns), Some("status"))
            } else if group.is_empty() && *resource == "finalize" && more.is_empty() {
                ("", "namespaces", Some(*ns), Some("finalize"))
            } else {
                (*ns, *resource, more.first().copied(), more.get(1).copied())
            }
        }
        [resource, more @ ..] => ("", *resource, more.first().copied(), more.get(1).copied()),
        [] => return path_not_found("/"),
    };
    let info = {
        let store = state.store.lock().unwrap();
        lookup_version(&store, group, version, resource)
    };
    let Some(info) = info else {
        return path_not_found(&format!("{group}/{version}/{resource}"));
    };
    if info.group.is_empty()
        && info.plural == "pods"
        && sub == Some("log")
        && rq.method == Method::GET
        && let Some(name) = name
    {
        let logs = state.pod_logs.lock().unwrap().clone();
        return match logs.and_then(|f| f(ns, name)) {
            Some(text) => Response::builder()
                .header("Content-Type", "text/plain")
                .body(Full::new(Bytes::from(text)).boxed())
                .unwrap(),
            None => not_found(&info, name),
        };
    }
    if let Some(sub) = sub
        && !(sub == "status" && info.status)
    {
        return path_not_found(&format!("{resource}/{sub}"));
    }
    let ns = if info.namespaced { ns } else { "" };
    let status_sub = sub.is_some();
    {
        let watching = matches!(
            rq.query.get("watch").map(String::as_str),
            Some("true" | "1")
        );
        let verb = match (&rq.method, name) {
            (&Method::GET, None) if watching => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, None) => "deletecollection",
            (&Method::DELETE, Some(_)) => "delete",
            _ => "other",
        };
        let resource = match sub {
            Some(sub) => format!("{}/{sub}", info.plural),
            None => info.plural.clone(),
        };
        state.requests.lock().unwrap().push((
            rq.token.clone(),
            RequestRecord {
                verb: verb.to_string(),
                group: info.group.clone(),
                resource,
                namespace: ns.to_string(),
            },
        ));
    }
    let watch = matches!(
        rq.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    match (rq.method.clone(), name) {
        (Method::GET, None) if watch => watch_request(state, &info, ns, &rq),
        (Method::GET, None) => {
            let store = state.store.lock().unwrap();
            let filter = match Filter::new(&info, ns, &rq.query) {
                Ok(f) => f,
                Err(e) => return bad_request(e),
            };
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, v)| filter.matches_key(k) && filter.matches(v))
                .map(|(_, v)| with_type(v.clone(), &info))
                .collect();
            let rv = store.rv.to_string();
            if wants_table(&rq.accept) {
                return ok(&table(&info, &items, &rv));
            }
            ok(
                &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(),
                       "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => {
            let store = state.store.lock().unwrap();
            match store.objects.get(&key(&info.group, &info.plural, ns, name)) {
                Some(v) => {
                    let v = with_type(v.clone(), &info);
                    if wants_table(&rq.accept) {
                        ok(&table(&info, &[v], &store.rv.to_string()))
                    } else {
                        ok(&v)
                    }
                }
                None => not_found(&info, name),
            }
        }
        (Method::POST, None) => {
            let obj = match parse_body(&rq) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let mut store = state.store.lock().unwrap();
            match create(state, &mut store, &info, ns, obj) {
                Ok(v) => respond(StatusCode::CREATED, &with_type(v, &info)),
                Err(r) => *r,
            }
        }
        (Method::PUT, Some(name)) => {
            let obj = match parse_body(&rq) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let mut store = state.store.lock().unwrap();
            let Some(old) = store
                .objects
                .get(&key(&info.group, &info.plural, ns, name))
                .cloned()
            else {
                return not_found(&info, name);
            };
            let given_rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            if !given_rv.is_empty() && old["metadata"]["resourceVersion"] != json!(given_rv) {
                return conflict(&info, name);
            }
            match update(state, &mut store, &info, ns, old, obj, status_sub) {
                Ok(v) => ok(&with_type(v, &info)),
                Err(r) => *r,
            }
        }
        (Method::PATCH, Some(name)) => {
            let patch = match parse_body(&rq) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            let mut store = state.store.lock().unwrap();
            let old = store
                .objects
                .get(&key(&info.group, &info.plural, ns, name))
                .cloned();
            let ct = rq
                .content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let Some(old) = old else {
                if ct == "application/apply-patch+yaml" && !status_sub {
                    let mut obj = patch;
                    obj["metadata"]["name"] = json!(name);
                    return match create(state, &mut store, &info, ns, obj) {
                        Ok(v) => respond(StatusCode::CREATED, &with_type(v, &info)),
                        Err(r) => *r,
                    };
                }
                return not_found(&info, name);
            };
            let mut new = old.clone();
            match ct.as_str() {
                "application/merge-patch+json" | "application/apply-patch+yaml" => {
                    merge_patch(&mut new, &patch)
                }
                "application/strategic-merge-patch+json" => strategic_merge(&mut new, &patch),
                "application/json-patch+json" => {
                    if let Err(e) = json_patch(&mut new, &patch) {
                        return status_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            e,
                            json!({}),
                        );
                    }
                }
                other => {
                    return status_error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other}"),
                        json!({}),
                    );
                }
            }
            let given_rv = match &patch["metadata"]["resourceVersion"] {
                Value::String(s) => s.clone(),
                _ => String::new(),
            };
            if !given_rv.is_empty() && old["metadata"]["resourceVersion"] != json!(given_rv) {
                return conflict(&info, name);
            }
            match update(state, &mut store, &info, ns, old, new, status_sub) {
                Ok(v) => ok(&with_type(v, &info)),
                Err(r) => *r,
            }
        }
        (Method::DELETE, Some(name)) => {
            let mut store = state.store.lock().unwrap();
            match state.delete(&mut store, &info.group, &info.plural, ns, name) {
                Some(v) => ok(&with_type(v, &info)),
                None => not_found(&info, name),
            }
        }
        (Method::DELETE, None) => {
            let mut store = state.store.lock().unwrap();
            let filter = match Filter::new(&info, ns, &rq.query) {
                Ok(f) => f,
                Err(e) => return bad_request(e),
            };
            let keys: Vec<Key> = store
                .objects
                .iter()
                .filter(|(k, v)| filter.matches_key(k) && filter.matches(v))
                .map(|(k, _)| k.clone())
                .collect();
            let mut items = vec![];
            for k in keys {
                if let Some(v) = state.delete(&mut store, &k.0, &k.1, &k.2, &k.3) {
                    items.push(with_type(v, &info));
                }
            }
            ok(
                &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(),
                       "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            )
        }
        (m, _) => status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("method {m} not allowed here"),
            json!({}),
        ),
    }
}

fn conflict(info: &ResInfo, name: &str) -> Response<Body> {
    status_error(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            qualified(info)
        ),
        json!({"name": name, "group": info.group, "kind": info.plural}),
    )
}

fn parse_body(rq: &Req) -> Result<Value, Box<Response<Body>>> {
    if let Ok(v) = serde_json::from_slice::<Value>(&rq.body) {
        return Ok(v);
    }
    serde_yaml_ng::from_slice::<Value>(&rq.body)
        .map_err(|e| Box::new(bad_request(format!("cannot decode the request body: {e}"))))
}

fn with_type(mut v: Value, info: &ResInfo) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!(info.api_version()));
        m.insert("kind".into(), json!(info.kind));
    }
    v
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn create(
    state: &State,
    store: &mut Store,
    info: &ResInfo,
    ns: &str,
    mut obj: Value,
) -> Result<Value, Box<Response<Body>>> {
    if !obj.is_object() {
        return Err(Box::new(bad_request("object expected".into())));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let mut name = name_of(&obj);
    if name.is_empty() {
        let Some(prefix) = obj["metadata"]["generateName"].as_str() else {
            return Err(Box::new(status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{} is invalid: metadata.name: Required value", info.kind),
                json!({"kind": info.kind}),
            )));
        };
        name = format!("{prefix}{:05x}", (store.uid * 7919 + 12345) % 0xfffff);
        obj["metadata"]["name"] = json!(name);
    }
    if store
        .objects
        .contains_key(&key(&info.group, &info.plural, ns, &name))
    {
        return Err(Box::new(status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(info)),
            json!({"name": name, "group": info.group, "kind": info.plural}),
        )));
    }
    store.uid += 1;
    let meta = obj["metadata"].as_object_mut().unwrap();
    meta.insert(
        "uid".into(),
        json!(format!("00000000-0000-4000-8000-{:012x}", store.uid)),
    );
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    if info.namespaced {
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    if info.plural == "customresourcedefinitions" && info.group == "apiextensions.k8s.io" {
        let names = obj["spec"]["names"].clone();
        obj["status"] = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
                 "lastTransitionTime": now_rfc3339()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now_rfc3339()}
            ],
            "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter()
                .filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>())
                .unwrap_or_default(),
        });
    } else if info.plural == "jobs" && info.group == "batch" {
        default_job(&mut obj);
        obj.as_object_mut().unwrap().remove("status");
    } else if info.plural == "namespaces" {
        obj["status"] = json!({"phase": "Active"});
    } else if info.status
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    Ok(state.insert(store, info, ns, obj))
}

/// The defaults a real API server gives a Job on create: selector and pod labels with the
/// controller uid, completions/parallelism 1, NonIndexed, backoffLimit 6 (unlimited with
/// backoffLimitPerIndex), not suspended.
fn default_job(job: &mut Value) {
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    let spec = &mut job["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    for (k, v) in [
        ("completions", json!(1)),
        ("parallelism", json!(1)),
        ("completionMode", json!("NonIndexed")),
        ("suspend", json!(false)),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    if spec["backoffLimit"].is_null() {
        spec["backoffLimit"] = if spec["backoffLimitPerIndex"].is_null() {
            json!(6)
        } else {
            json!(i32::MAX)
        };
    }
    if spec["selector"].is_null() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
    ] {
        labels[k] = v.clone();
    }
}

/// Writes `new` over `old` (main resource or status subresource) and finishes a pending delete
/// when the last finalizer is gone.
fn update(
    state: &State,
    store: &mut Store,
    info: &ResInfo,
    ns: &str,
    old: Value,
    new: Value,
    status_sub: bool,
) -> Result<Value, Box<Response<Body>>> {
    let mut result;
    if status_sub {
        result = old.clone();
        result["status"] = new["status"].clone();
    } else {
        result = new;
        if !result.is_object() {
            return Err(Box::new(bad_request("object expected".into())));
        }
        if info.status {
            match old.get("status") {
                Some(s) => result["status"] = s.clone(),
                None => {
                    result.as_object_mut().unwrap().remove("status");
                }
            }
        }
        // Immutable metadata.
        for f in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
            "generation",
        ] {
            match old["metadata"].get(f) {
                Some(v) => result["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = result["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        if spec_of(&old) != spec_of(&result) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            result["metadata"]["generation"] = json!(g);
        }
    }
    if let Some(m) = result.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    // Nothing changed: no new resourceVersion, no event (as a real server does).
    let mut cmp = result.clone();
    cmp["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if cmp == old {
        return Ok(old);
    }
    let deleting = !result["metadata"]["deletionTimestamp"].is_null();
    let finalizers_left = result["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let name = name_of(&result);
    let stored = state.insert(store, info, ns, result);
    if deleting && !finalizers_left {
        state.remove(store, &info.group, &info.plural, ns, &name);
    }
    Ok(stored)
}

/// Everything but metadata and status: what bumps metadata.generation when changed.
fn spec_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Patches

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Merge patch, except that lists of objects that all have a `name` merge by name, and `$…`
/// directives are dropped. Good enough for containers, env, volumes, ports.
fn strategic_merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        Value::Array(items) => {
            let named = |a: &[Value]| a.iter().all(|i| i["name"].is_string());
            match target {
                Value::Array(existing) if !items.is_empty() && named(items) && named(existing) => {
                    for item in items {
                        match existing.iter_mut().find(|e| e["name"] == item["name"]) {
                            Some(e) => strategic_merge(e, item),
                            None => existing.push(item.clone()),
                        }
                    }
                }
                _ => *target = patch.clone(),
            }
        }
        _ => *target = patch.clone(),
    }
}

/// RFC 6902 JSON patch (add, remove, replace, test, copy, move).
fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("json patch must be an array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str().unwrap_or_default() {
            "add" => pointer_add(target, path, op["value"].clone())?,
            "remove" => {
                pointer_remove(target, path)?;
            }
            "replace" => {
                let slot = target
                    .pointer_mut(path)
                    .ok_or(format!("path {path} not found"))?;
                *slot = op["value"].clone();
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or("op without from")?;
                let v = if op["op"] == json!("move") {
                    pointer_remove(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or(format!("path {from} not found"))?
                };
                pointer_add(target, path, v)?;
            }
            other => return Err(format!("unknown op {other}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or(format!("bad path {path}"))?;
    Ok((
        parent.to_string(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn pointer_add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
        }
        Some(Value::Array(a)) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
                if i > a.len() {
                    return Err(format!("index {i} out of range"));
                }
                a.insert(i, value);
            }
        }
        _ => return Err(format!("path {parent} not found")),
    }
    Ok(())
}

fn pointer_remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or(format!("path {path} not found")),
        Some(Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("path {parent} not found")),
    }
}

// ---------------------------------------------------------------------------------------------
// Selectors

enum Req8 {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

struct Filter {
    group: String,
    resource: String,
    namespace: String,
    labels: Vec<Req8>,
    fields: Vec<(String, String, bool)>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_labels(s: &str) -> Result<Vec<Req8>, String> {
    let mut out = vec![];
    for term in split_top(s) {
        let set = |rest: &str| -> Vec<String> {
            rest.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|v| v.trim().to_string())
                .collect()
        };
        if let Some((k, v)) = term.split_once("!=") {
            out.push(Req8::Ne(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = term.split_once("==") {
            out.push(Req8::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = term.split_once('=') {
            out.push(Req8::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            out.push(Req8::NotIn(k.trim().into(), set(rest)));
        } else if let Some((k, rest)) = term.split_once(" in ") {
            out.push(Req8::In(k.trim().into(), set(rest)));
        } else if let Some(k) = term.strip_prefix('!') {
            out.push(Req8::NotExists(k.trim().into()));
        } else if term
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            out.push(Req8::Exists(term));
        } else {
            return Err(format!("unable to parse requirement: {term}"));
        }
    }
    Ok(out)
}

impl Filter {
    fn new(info: &ResInfo, ns: &str, query: &BTreeMap<String, String>) -> Result<Filter, String> {
        let labels = parse_labels(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
        let mut fields = vec![];
        for term in split_top(query.get("fieldSelector").map(String::as_str).unwrap_or("")) {
            if let Some((k, v)) = term.split_once("!=") {
                fields.push((k.trim().into(), v.trim().into(), false));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                fields.push((k.trim().into(), v.trim().into(), true));
            } else {
                return Err(format!("invalid field selector: {term}"));
            }
        }
        Ok(Filter {
            group: info.group.clone(),
            resource: info.plural.clone(),
            namespace: ns.to_string(),
            labels,
            fields,
        })
    }

    fn matches_key(&self, k: &Key) -> bool {
        k.0 == self.group
            && k.1 == self.resource
            && (self.namespace.is_empty() || k.2 == self.namespace)
    }

    /// The event type this watch sees for `ev`, if any.
    fn event_kind(&self, ev: &Event) -> Option<&'static str> {
        if ev.group != self.group
            || ev.resource != self.resource
            || !(self.namespace.is_empty() || ev.namespace == self.namespace)
        {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.previous.as_ref().is_some_and(|p| self.matches(p));
        match (ev.kind, before, now) {
            ("MODIFIED", true, false) => Some("DELETED"),
            ("MODIFIED", false, true) => Some("ADDED"),
            ("MODIFIED", false, false) => None,
            (kind, _, true) => Some(kind),
            _ => None,
        }
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str();
        let labels_ok = self.labels.iter().all(|r| match r {
            Req8::Eq(k, v) => label(k) == Some(v.as_str()),
            Req8::Ne(k, v) => label(k) != Some(v.as_str()),
            Req8::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req8::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req8::Exists(k) => label(k).is_some(),
            Req8::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(path, want, eq)| {
                let ptr = format!("/{}", path.replace('.', "/"));
                let got = match obj.pointer(&ptr) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(v) => v.to_string(),
                };
                (got == *want) == *eq
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Watch

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch_request(state: &Arc<State>, info: &ResInfo, ns: &str, rq: &Req) -> Response<Body> {
    let filter = match Filter::new(info, ns, &rq.query) {
        Ok(f) => Arc::new(f),
        Err(e) => return bad_request(e),
    };
    let timeout = rq
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let bookmarks = rq
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let from = rq.query.get("resourceVersion").cloned().unwrap_or_default();
    let info = info.clone();
    let mut initial: Vec<Bytes> = vec![];
    let rx;
    let last_rv;
    {
        let store = state.store.lock().unwrap();
        rx = state.events.subscribe();
        last_rv = store.rv;
        if from.is_empty() || from == "0" {
            for (k, v) in &store.objects {
                if filter.matches_key(k) && filter.matches(v) {
                    initial.push(watch_line("ADDED", &with_type(v.clone(), &info)));
                }
            }
        } else {
            let Ok(from) = from.parse::<u64>() else {
                return bad_request(format!("invalid resourceVersion {from}"));
            };
            if from < store.compacted {
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", store.compacted),
                    "reason": "Expired", "code": 410});
                initial.push(watch_line("ERROR", &status));
                let body = futures::stream::iter(initial.into_iter().map(|b| Ok(Frame::data(b))));
                return Response::builder()
                    .header("Content-Type", "application/json")
                    .body(BodyExt::boxed(StreamBody::new(body)))
                    .unwrap();
            }
            for ev in store.history.iter().filter(|e| e.rv > from) {
                if let Some(kind) = filter.event_kind(ev) {
                    initial.push(watch_line(kind, &with_type(ev.object.clone(), &info)));
                }
            }
        }
    }
    if bookmarks {
        let mut bm = json!({"apiVersion": info.api_version(), "kind": info.kind,
                            "metadata": {"resourceVersion": last_rv.to_string()}});
        bm["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        initial.push(watch_line("BOOKMARK", &bm));
    }
    let live = futures::stream::unfold(
        (rx, filter, info),
        move |(mut rx, filter, info)| async move {
            loop {
                let next = match timeout {
                    Some(deadline) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => return None,
                    },
                    None => rx.recv().await,
                };
                match next {
                    Ok(ev) => {
                        if let Some(kind) = filter.event_kind(&ev) {
                            let line = watch_line(kind, &with_type(ev.object.clone(), &info));
                            return Some((line, (rx, filter, info)));
                        }
                    }
                    // Lagged or closed: end the watch; clients re-watch from their last version.
                    Err(_) => return None,
                }
            }
        },
    );
    let body = futures::stream::iter(initial)
        .chain(live)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tables (kubectl get)

fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn table(info: &ResInfo, items: &[Value], rv: &str) -> Value {
    let mut columns = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    let printer: Vec<Value> = if info.columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        info.columns.clone()
    };
    for c in &printer {
        columns.push(json!({"name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0))}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![json!(name_of(item))];
            for c in &printer {
                let path = c["jsonPath"].as_str().unwrap_or_default();
                let ptr = path.replace('.', "/");
                let v = if path.starts_with('@') {
                    computed_cell(path, item)
                } else {
                    item.pointer(&ptr).cloned().unwrap_or(Value::Null)
                };
                let cell = if c["type"] == json!("date") {
                    v.as_str().map(|s| json!(age(s))).unwrap_or(json!("<unknown>"))
                } else {
                    v
                };
                cells.push(cell);
            }
            let mut meta = item["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                              "metadata": meta}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
           "columnDefinitions": columns, "rows": rows})
}

// ---------------------------------------------------------------------------------------------
// Time

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_rfc3339() -> String {
    let t = now_secs();
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let days = days_from_civil(n(0..4)?, n(5..7)?, n(8..10)?);
    Some(days * 86_400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?)
}

/// kubectl-style age: 5s, 3m, 2h, 4d.
fn age(ts: &str) -> String {
    let Some(t) = parse_rfc3339(ts) else {
        return "<invalid>".into();
    };
    let d = (now_secs() - t).max(0);
    match d {
        d if d < 120 => format!("{d}s"),
        d if d < 3600 * 2 => format!("{}m", d / 60),
        d if d < 86_400 * 2 => format!("{}h", d / 3600),
        d => format!("{}d", d / 86_400),
    }
}
