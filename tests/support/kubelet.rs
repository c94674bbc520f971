//! A kubelet and Job controller stand-in for the test API server: it polls Jobs, creates their
//! Pods, runs each pod's (single) container as a local process, and writes Pod and Job status.
//!
//! - Indexed Jobs get one pod per completion index (`JOB_COMPLETION_INDEX` env, annotation and
//!   label `batch.kubernetes.io/job-completion-index`); a failed index is retried up to
//!   `backoffLimitPerIndex` times. NonIndexed Jobs retry up to `backoffLimit` failures in all.
//! - The image's `stampede` command runs the binary given to [`Kubelet::start`]; other commands
//!   run as they are.
//! - Env: `value`, `valueFrom.secretKeyRef`, `valueFrom.configMapKeyRef`, `valueFrom.fieldRef`
//!   (`metadata.name`, `metadata.namespace`, `status.podIP`).
//! - Volumes: configMap and secret volumes are written to a temp dir, emptyDir is a temp dir;
//!   a container argument or env value that starts with a mount path is rewritten to the local
//!   dir (e.g. `/plan/stresstest.yaml` → `<tmp>/<pod>/plan/stresstest.yaml`).
//! - Each pod gets its own loopback address 127.0.0.N (N from 2) as `status.podIP`, and
//!   `0.0.0.0:` in its arguments becomes `127.0.0.N:`.
//! - [`Kubelet::kill`] kills a pod's process (the pod fails, the Job retries the index).
//! - Deleting a pod (or its Job, through garbage collection) kills its process.
//! - `kubectl logs <pod>` shows the process's stdout and stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::apiserver::{ApiServer, now_rfc3339};

const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";

/// A running kubelet stand-in. Dropping it kills every process it started.
pub struct Kubelet {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct PodRun {
    namespace: String,
    name: String,
    job_uid: String,
    index: u32,
    container: String,
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

#[derive(Default)]
struct JobRun {
    failures: BTreeMap<u32, u32>,
    total_failures: u32,
    succeeded: BTreeSet<u32>,
    failed_indexes: BTreeSet<u32>,
    started: Option<String>,
    last_status: Value,
    done: bool,
}

struct Inner {
    root: tempfile::TempDir,
    stampede_bin: PathBuf,
    pods: Vec<PodRun>,
    jobs: BTreeMap<String, JobRun>,
    next_ip: u32,
    next_suffix: u64,
}

impl Kubelet {
    /// Starts polling the server's Jobs on a thread of its own.
    pub fn start(server: &ApiServer, stampede_bin: PathBuf) -> Kubelet {
        let inner = Arc::new(Mutex::new(Inner {
            root: tempfile::tempdir().unwrap(),
            stampede_bin,
            pods: vec![],
            jobs: BTreeMap::new(),
            next_ip: 2,
            next_suffix: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let logs_of = inner.clone();
        server.set_pod_logs(Arc::new(move |ns: &str, name: &str| {
            let inner = logs_of.lock().unwrap();
            let pod = inner
                .pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)?;
            std::fs::read_to_string(pod.dir.join("log")).ok()
        }));
        let url = server.url();
        let (inner2, stop2) = (inner.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("test-kubelet".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
                    while !stop2.load(Ordering::SeqCst) {
                        if let Err(e) = tick(&client, &inner2).await {
                            eprintln!("kubelet stand-in: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
            })
            .unwrap();
        Kubelet {
            inner,
            stop,
            thread: Some(thread),
        }
    }

    /// Kills the process of a running pod (any namespace). Returns whether one was running.
    pub fn kill(&self, pod_name: &str) -> bool {
        let mut inner = self.inner.lock().unwrap();
        for p in inner.pods.iter_mut() {
            if p.name == pod_name
                && let Some(child) = p.child.as_mut()
            {
                let _ = child.kill();
                return true;
            }
        }
        false
    }

    /// Names of the pods whose processes are running now.
    pub fn running(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .pods
            .iter()
            .filter(|p| p.child.is_some())
            .map(|p| p.name.clone())
            .collect()
    }

    /// The combined stdout and stderr of a pod's process so far.
    pub fn logs(&self, pod_name: &str) -> String {
        let inner = self.inner.lock().unwrap();
        inner
            .pods
            .iter()
            .find(|p| p.name == pod_name)
            .and_then(|p| std::fs::read_to_string(p.dir.join("log")).ok())
            .unwrap_or_default()
    }

    /// The local directory of a pod (its volumes, under the volume names, and `log`).
    pub fn pod_dir(&self, pod_name: &str) -> Option<PathBuf> {
        let inner = self.inner.lock().unwrap();
        inner
            .pods
            .iter()
            .find(|p| p.name == pod_name)
            .map(|p| p.dir.clone())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut inner = self.inner.lock().unwrap();
        for p in inner.pods.iter_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn tick(client: &Client, inner: &Arc<Mutex<Inner>>) -> Res<()> {
    let pods_api: Api<Pod> = Api::all(client.clone());
    // 1. Reap exited processes; kill the processes of pods deleted from the store.
    let live: BTreeSet<(String, String)> = pods_api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    // (namespace, name, container, job uid, index, exit code)
    let mut exited: Vec<(String, String, String, String, u32, i32)> = vec![];
    {
        let mut guard = inner.lock().unwrap();
        let g = &mut *guard;
        for p in g.pods.iter_mut() {
            let Some(child) = p.child.as_mut() else {
                continue;
            };
            if !live.contains(&(p.namespace.clone(), p.name.clone())) {
                let _ = child.kill();
                let _ = child.wait();
                p.child = None;
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let code = status.code().unwrap_or(137);
                p.child = None;
                exited.push((
                    p.namespace.clone(),
                    p.name.clone(),
                    p.container.clone(),
                    p.job_uid.clone(),
                    p.index,
                    code,
                ));
            }
        }
        for (_, _, _, uid, index, code) in &exited {
            let jr = g.jobs.entry(uid.clone()).or_default();
            if *code == 0 {
                jr.succeeded.insert(*index);
            } else {
                *jr.failures.entry(*index).or_default() += 1;
                jr.total_failures += 1;
            }
        }
    }
    for (ns, name, container, _, _, code) in exited {
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let status = json!({"status": {"phase": phase, "containerStatuses": [{
            "name": container, "ready": false, "restartCount": 0, "image": "", "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                                     "finishedAt": now_rfc3339()}}}]}});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }

    // 2. Reconcile Jobs.
    let jobs_api: Api<Job> = Api::all(client.clone());
    for job in jobs_api.list(&ListParams::default()).await?.items {
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        reconcile_job(client, inner, &job).await?;
    }
    Ok(())
}

async fn reconcile_job(client: &Client, inner: &Arc<Mutex<Inner>>, job: &Job) -> Res<()> {
    let uid = job.uid().unwrap_or_default();
    let ns = job.namespace().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    if spec.suspend == Some(true) {
        return Ok(());
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(1).max(1) as u32;
    let parallelism = spec.parallelism.unwrap_or(1).max(1) as u32;
    let per_index = spec.backoff_limit_per_index;
    let backoff = spec.backoff_limit.unwrap_or(6).max(0) as u32;

    let mut to_start = vec![];
    let mut status_patch = None;
    {
        let mut guard = inner.lock().unwrap();
        let g = &mut *guard;
        let active: BTreeSet<u32> = g
            .pods
            .iter()
            .filter(|p| p.job_uid == uid && p.child.is_some())
            .map(|p| p.index)
            .collect();
        let jr = g.jobs.entry(uid.clone()).or_default();
        if jr.done {
            return Ok(());
        }
        if jr.started.is_none() {
            jr.started = Some(now_rfc3339());
        }
        let mut slots = parallelism.saturating_sub(active.len() as u32);
        let mut job_failed = false;
        for index in 0..completions {
            if jr.succeeded.contains(&index)
                || jr.failed_indexes.contains(&index)
                || active.contains(&index)
            {
                continue;
            }
            let failures = jr.failures.get(&index).copied().unwrap_or(0);
            if let Some(limit) = per_index.filter(|_| indexed) {
                if failures > limit.max(0) as u32 {
                    jr.failed_indexes.insert(index);
                    continue;
                }
            } else if jr.total_failures > backoff {
                job_failed = true;
                break;
            }
            if slots > 0 {
                slots -= 1;
                to_start.push(index);
            }
        }
        let finished = jr.succeeded.len() + jr.failed_indexes.len();
        let complete = jr.succeeded.len() as u32 >= completions;
        let failed =
            job_failed || (finished as u32 >= completions && !jr.failed_indexes.is_empty());
        let now = now_rfc3339();
        let mut status = json!({
            "active": active.len() + to_start.len(),
            "ready": active.len() + to_start.len(),
            "succeeded": jr.succeeded.len(),
            "failed": jr.total_failures,
            "startTime": jr.started,
        });
        if indexed {
            status["completedIndexes"] = json!(ranges(&jr.succeeded));
            if per_index.is_some() {
                status["failedIndexes"] = json!(ranges(&jr.failed_indexes));
            }
        }
        if complete || failed {
            jr.done = true;
            status["active"] = json!(0);
            status["ready"] = json!(0);
            let (ty, reason) = if complete {
                ("Complete", "Completed")
            } else if job_failed {
                ("Failed", "BackoffLimitExceeded")
            } else {
                ("Failed", "FailedIndexes")
            };
            let pre = if complete {
                "SuccessCriteriaMet"
            } else {
                "FailureTarget"
            };
            status["conditions"] = json!([
                {"type": pre, "status": "True", "reason": reason, "lastProbeTime": now, "lastTransitionTime": now},
                {"type": ty, "status": "True", "reason": reason, "lastProbeTime": now, "lastTransitionTime": now}
            ]);
            if complete {
                status["completionTime"] = json!(now);
            }
            to_start.clear();
        }
        if status != jr.last_status {
            jr.last_status = status.clone();
            status_patch = Some(status);
        }
    }
    if let Some(status) = status_patch {
        let api: Api<Job> = Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
    }
    for index in to_start {
        start_pod(client, inner, job, index, indexed).await?;
    }
    Ok(())
}

/// `1,3-5,7` style ranges of a set of indexes (the Job status format).
fn ranges(set: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = vec![];
    let v: Vec<u32> = set.iter().copied().collect();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        // Runs of three or more are `a-b`; shorter runs are listed (as Kubernetes does).
        if j >= i + 2 {
            out.push(format!("{}-{}", v[i], v[j]));
        } else {
            out.extend(v[i..=j].iter().map(u32::to_string));
        }
        i = j + 1;
    }
    out.join(",")
}

async fn start_pod(
    client: &Client,
    inner: &Arc<Mutex<Inner>>,
    job: &Job,
    index: u32,
    indexed: bool,
) -> Res<()> {
    let ns = job.namespace().unwrap_or_default();
    let job_name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let template = serde_json::to_value(job.spec.as_ref().map(|s| &s.template))?;
    let (name, ip, dir, bin) = {
        let mut g = inner.lock().unwrap();
        g.next_suffix += 1;
        let suffix = format!("{:05x}", (g.next_suffix * 48_271) % 0xfffff);
        let name = if indexed {
            format!("{job_name}-{index}-{suffix}")
        } else {
            format!("{job_name}-{suffix}")
        };
        let n = g.next_ip;
        g.next_ip += 1;
        let ip = format!(
            "127.0.{}.{}",
            n / 254,
            n % 254 + if n / 254 == 0 { 0 } else { 1 }
        );
        let dir = g.root.path().join(&name);
        (name, ip, dir, g.stampede_bin.clone())
    };
    std::fs::create_dir_all(&dir)?;

    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["batch.kubernetes.io/job-name"] = json!(job_name);
    labels["job-name"] = json!(job_name);
    labels["batch.kubernetes.io/controller-uid"] = json!(uid);
    labels["controller-uid"] = json!(uid);
    let mut annotations = json!({});
    let mut pod_spec = template["spec"].clone();
    pod_spec["nodeName"] = json!("local");
    if indexed {
        labels[INDEX_KEY] = json!(index.to_string());
        annotations[INDEX_KEY] = json!(index.to_string());
        if let Some(containers) = pod_spec["containers"].as_array_mut() {
            for c in containers {
                if !c["env"].is_array() {
                    c["env"] = json!([]);
                }
                c["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "JOB_COMPLETION_INDEX", "value": index.to_string()}));
            }
        }
    }
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid,
                                 "controller": true, "blockOwnerDeletion": true}]},
        "spec": pod_spec,
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod.clone())?,
    )
    .await?;
    inner.lock().unwrap().pods.push(PodRun {
        namespace: ns.clone(),
        name: name.clone(),
        job_uid: uid.clone(),
        index,
        container: pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ip: ip.clone(),
        dir: dir.clone(),
        child: None,
    });

    let pending = json!({"status": {"phase": "Pending", "hostIP": "127.0.0.1"}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&pending))
        .await?;
    let spawned = prepare_and_spawn(client, &ns, &name, &pod, &ip, &dir, &bin).await;
    let status = match spawned {
        Ok(child) => {
            let mut g = inner.lock().unwrap();
            if let Some(p) = g.pods.iter_mut().find(|p| p.name == name) {
                p.child = Some(child);
            }
            json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
                "startTime": now_rfc3339(),
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}],
                "containerStatuses": [{"name": pod["spec"]["containers"][0]["name"], "ready": true,
                    "restartCount": 0, "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                    "started": true, "state": {"running": {"startedAt": now_rfc3339()}}}]}})
        }
        Err(e) => {
            std::fs::write(dir.join("log"), format!("kubelet stand-in: {e}\n"))?;
            let mut g = inner.lock().unwrap();
            let jr = g.jobs.entry(uid.clone()).or_default();
            *jr.failures.entry(index).or_default() += 1;
            jr.total_failures += 1;
            json!({"status": {"phase": "Failed", "podIP": ip, "message": e.to_string()}})
        }
    };
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Materialises the pod's volumes, resolves its env and starts its first container.
async fn prepare_and_spawn(
    client: &Client,
    ns: &str,
    name: &str,
    pod: &Value,
    ip: &str,
    dir: &Path,
    bin: &Path,
) -> Res<Child> {
    let spec = &pod["spec"];
    let mut local: BTreeMap<String, PathBuf> = BTreeMap::new();
    for vol in spec["volumes"].as_array().cloned().unwrap_or_default() {
        let vname = vol["name"].as_str().unwrap_or_default().to_string();
        let vdir = dir.join(&vname);
        std::fs::create_dir_all(&vdir)?;
        let items = vol["configMap"]["items"]
            .as_array()
            .or(vol["secret"]["items"].as_array())
            .cloned();
        let files: BTreeMap<String, Vec<u8>> = if let Some(cm) = vol["configMap"]["name"].as_str() {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = api.get(cm).await?;
            let mut f: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            f.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            f
        } else if let Some(secret) = vol["secret"]["secretName"].as_str() {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let s = api.get(secret).await?;
            let mut f: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            f.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            f
        } else {
            BTreeMap::new()
        };
        match items {
            Some(items) => {
                for item in items {
                    let key = item["key"].as_str().unwrap_or_default();
                    let path = item["path"].as_str().unwrap_or(key);
                    if let Some(data) = files.get(key) {
                        let target = vdir.join(path);
                        if let Some(parent) = target.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        std::fs::write(target, data)?;
                    }
                }
            }
            None => {
                for (k, data) in &files {
                    std::fs::write(vdir.join(k), data)?;
                }
            }
        }
        local.insert(vname, vdir);
    }
    let container = &spec["containers"][0];
    // Mount path → local dir, longest first so nested mounts win.
    let mut mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let local = local.get(m["name"].as_str()?)?;
            Some((
                m["mountPath"].as_str()?.trim_end_matches('/').to_string(),
                local.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    let rewrite = |s: &str| -> String {
        for (mount, local) in &mounts {
            if s == mount {
                return local.clone();
            }
            if let Some(rest) = s.strip_prefix(&format!("{mount}/")) {
                return format!("{local}/{rest}");
            }
        }
        s.replace("0.0.0.0:", &format!("{ip}:"))
    };

    let mut env: Vec<(String, String)> = vec![];
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let ename = e["name"].as_str().unwrap_or_default().to_string();
        if let Some(v) = e["value"].as_str() {
            env.push((ename, rewrite(v)));
            continue;
        }
        let from = &e["valueFrom"];
        let value = if let Some(sel) = from["secretKeyRef"].as_object() {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let sname = sel["name"].as_str().unwrap_or_default();
            let key = sel["key"].as_str().unwrap_or_default();
            api.get_opt(sname).await?.and_then(|s| {
                s.data
                    .and_then(|d| {
                        d.get(key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                    .or_else(|| s.string_data.and_then(|d| d.get(key).cloned()))
            })
        } else if let Some(sel) = from["configMapKeyRef"].as_object() {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cname = sel["name"].as_str().unwrap_or_default();
            let key = sel["key"].as_str().unwrap_or_default();
            api.get_opt(cname)
                .await?
                .and_then(|c| c.data.and_then(|d| d.get(key).cloned()))
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => Some(name.to_string()),
                "metadata.namespace" => Some(ns.to_string()),
                "status.podIP" => Some(ip.to_string()),
                _ => None,
            }
        } else {
            None
        };
        match value {
            Some(v) => env.push((ename, v)),
            None => {
                let optional = ["secretKeyRef", "configMapKeyRef"]
                    .iter()
                    .any(|k| from[k]["optional"] == json!(true));
                if !optional && !from["fieldRef"].is_object() {
                    return Err(format!("env {ename}: reference not found").into());
                }
            }
        }
    }

    let mut argv: Vec<String> = container["command"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    argv.extend(
        container["args"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(String::from)),
    );
    if argv.is_empty() {
        return Err("container has no command (image entrypoints are not known here)".into());
    }
    let program = if argv[0] == "stampede" {
        bin.to_path_buf()
    } else {
        PathBuf::from(&argv[0])
    };
    let args: Vec<String> = argv[1..].iter().map(|a| rewrite(a)).collect();
    let log = std::fs::File::create(dir.join("log"))?;
    let child = Command::new(program)
        .args(&args)
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child)
}
