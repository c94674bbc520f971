//! Tests of the in-process Kubernetes API test server (tests/support/apiserver.rs), with real
//! `kubectl` and kube-rs as clients.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::kubelet::Kubelet;

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stresstest.yaml");
const QUICKSTART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml");

fn stresstests(server: &ApiServer) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("stampede.dev", "v1alpha1", "StressTest");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "stresstests");
    Api::namespaced_with(server.client(), "default", &ar)
}

fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"}
    }))
    .unwrap()
}

fn job(name: &str, labels: &[(&str, &str)]) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}}
    }))
    .unwrap()
}

#[test]
fn applying_the_crd_makes_kubectl_list_stresstests_with_short_name_st() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    let out = server.kubectl_ok(&["api-resources", "--api-group=stampede.dev"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("stresstests"))
        .unwrap_or_else(|| panic!("no stresstests in:\n{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "stresstests",
            "st",
            "stampede.dev/v1alpha1",
            "true",
            "StressTest"
        ]
    );
}

#[test]
fn applying_the_crd_twice_is_unchanged_the_second_time() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    let out = server.kubectl_ok(&["apply", "-f", CRD]);
    assert!(
        out.contains("unchanged") || out.contains("configured"),
        "{out}"
    );
}

#[test]
fn kubectl_get_st_prints_the_printer_columns_of_the_crd() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    server.kubectl_ok(&["apply", "-f", QUICKSTART]);
    let out = server.kubectl_ok(&["get", "st"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "STAGE", "QPS", "P95", "P99", "SLA", "AGE"]
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("quickstart "), "{out}");
}

#[test]
fn server_side_apply_through_kubectl_creates_and_updates() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "--server-side", "-f", CRD]);
    server.kubectl_ok(&["apply", "--server-side", "-f", QUICKSTART]);
    let out = server.kubectl_ok(&[
        "get",
        "stresstests.stampede.dev",
        "quickstart",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["collection"]["dimension"], json!(64));
    server.kubectl_ok(&["apply", "--server-side", "-f", QUICKSTART]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_patch_through_kube_rs_is_visible_to_kubectl_get_json() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    server.kubectl_ok(&["apply", "-f", QUICKSTART]);
    let api = stresstests(&server);
    let patch =
        json!({"status": {"phase": "Running", "currentStage": "s1", "totals": {"qps": 123.5}}});
    api.patch_status("quickstart", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let out = server.kubectl_ok(&["get", "st", "quickstart", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["phase"], json!("Running"));
    assert_eq!(v["status"]["totals"]["qps"], json!(123.5));
    let table = server.kubectl_ok(&["get", "st", "quickstart", "--no-headers"]);
    let cells: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&cells[..4], ["quickstart", "Running", "s1", "123.5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_normal_update_does_not_change_status_and_a_status_update_does_not_change_spec() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    server.kubectl_ok(&["apply", "-f", QUICKSTART]);
    let api = stresstests(&server);
    let pp = PatchParams::default();
    let p = json!({"spec": {"data": {"rows": 7}}, "status": {"phase": "Hacked"}});
    let after = api
        .patch("quickstart", &pp, &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(after.data["spec"]["data"]["rows"], json!(7));
    assert!(after.data["status"]["phase"].is_null());
    assert_eq!(after.metadata.generation, Some(2));
    let p = json!({"spec": {"data": {"rows": 9}}, "status": {"phase": "Ok"}});
    let after = api
        .patch_status("quickstart", &pp, &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(after.data["spec"]["data"]["rows"], json!(7));
    assert_eq!(after.data["status"]["phase"], json!("Ok"));
    assert_eq!(after.metadata.generation, Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kube_rs_watcher_sees_added_then_modified() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    // Initial list (empty) completes first.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
        {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    cms.create(&PostParams::default(), &configmap("watched", &[]))
        .await
        .unwrap();
    let p = json!({"data": {"k": "changed"}});
    cms.patch("watched", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let mut seen = vec![];
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
        {
            Some(Ok(watcher::Event::Apply(cm))) => {
                seen.push(cm.data.unwrap()["k"].clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["v", "changed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_from_a_compacted_resource_version_gets_410_gone() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    cms.create(&PostParams::default(), &configmap("a", &[]))
        .await
        .unwrap();
    server.compact();
    let mut stream = cms
        .watch(&kube::api::WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Err(kube::Error::Api(status))) => assert_eq!(status.code, 410),
        Some(Ok(kube::api::WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_with_a_label_selector_sees_objects_enter_and_leave_the_selection() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let list = cms
        .list(&ListParams::default().labels("role=worker"))
        .await
        .unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let wp = kube::api::WatchParams::default().labels("role=worker");
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    cms.create(
        &PostParams::default(),
        &configmap("c", &[("role", "other")]),
    )
    .await
    .unwrap();
    let pp = PatchParams::default();
    let to = |role: &str| json!({"metadata": {"labels": {"role": role}}});
    cms.patch("c", &pp, &Patch::Merge(&to("worker")))
        .await
        .unwrap();
    cms.patch("c", &pp, &Patch::Merge(&to("worker2")))
        .await
        .unwrap();
    let mut kinds = vec![];
    while kinds.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            kube::api::WatchEvent::Added(_) => kinds.push("ADDED"),
            kube::api::WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            kube::api::WatchEvent::Deleted(_) => kinds.push("DELETED"),
            kube::api::WatchEvent::Bookmark(_) => {}
            kube::api::WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_an_existing_object_is_409_already_exists() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    cms.create(&PostParams::default(), &configmap("twice", &[]))
        .await
        .unwrap();
    let err = cms
        .create(&PostParams::default(), &configmap("twice", &[]))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "AlreadyExists");
        }
        e => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_with_a_stale_resource_version_is_409_conflict() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let first = cms
        .create(&PostParams::default(), &configmap("cm", &[]))
        .await
        .unwrap();
    let mut second = first.clone();
    second.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let second = cms
        .replace("cm", &PostParams::default(), &second)
        .await
        .unwrap();
    assert_ne!(second.resource_version(), first.resource_version());
    let err = cms
        .replace("cm", &PostParams::default(), &first)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        e => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn getting_a_missing_object_is_404_not_found() {
    let server = ApiServer::start();
    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    match jobs.get("nope").await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
        }
        e => panic!("{e}"),
    }
    assert!(jobs.get_opt("nope").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_owner_deletes_the_configmap_it_owns() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    server.kubectl_ok(&["apply", "-f", QUICKSTART]);
    let owner = stresstests(&server).get("quickstart").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut owned = configmap("quickstart-plan", &[]);
    owned.metadata.owner_references = Some(vec![
        serde_json::from_value(
            json!({"apiVersion": "stampede.dev/v1alpha1", "kind": "StressTest",
            "name": "quickstart", "uid": owner.uid().unwrap(), "controller": true}),
        )
        .unwrap(),
    ]);
    cms.create(&PostParams::default(), &owned).await.unwrap();
    cms.create(&PostParams::default(), &configmap("unrelated", &[]))
        .await
        .unwrap();
    server.kubectl_ok(&["delete", "st", "quickstart"]);
    assert!(cms.get_opt("quickstart-plan").await.unwrap().is_none());
    assert!(cms.get_opt("unrelated").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_with_finalizers_stays_until_they_are_removed() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut cm = configmap("held", &[]);
    cm.metadata.finalizers = Some(vec!["stampede.dev/cleanup".into()]);
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let p = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_selector_lists_only_matching_jobs() {
    let server = ApiServer::start();
    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    jobs.create(&pp, &job("w", &[("test", "a"), ("role", "worker")]))
        .await
        .unwrap();
    jobs.create(&pp, &job("p", &[("test", "a"), ("role", "prepare")]))
        .await
        .unwrap();
    jobs.create(&pp, &job("o", &[("test", "b"), ("role", "worker")]))
        .await
        .unwrap();
    let names = |l: kube::core::ObjectList<Job>| {
        let mut n: Vec<String> = l.items.iter().map(|j| j.name_any()).collect();
        n.sort();
        n
    };
    let got = jobs
        .list(&ListParams::default().labels("test=a,role=worker"))
        .await
        .unwrap();
    assert_eq!(names(got), ["w"]);
    let got = jobs
        .list(&ListParams::default().labels("test=a"))
        .await
        .unwrap();
    assert_eq!(names(got), ["p", "w"]);
    let got = jobs
        .list(&ListParams::default().labels("role in (prepare),test!=b"))
        .await
        .unwrap();
    assert_eq!(names(got), ["p"]);
    let got = jobs
        .list(&ListParams::default().fields("metadata.name=o"))
        .await
        .unwrap();
    assert_eq!(names(got), ["o"]);
    let out = server.kubectl_ok(&["get", "jobs", "-l", "role=worker", "-o", "name"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["job.batch/o", "job.batch/w"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_through_kube_rs_creates_then_merges() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PatchParams::apply("test").force();
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
                       "data": {"a": "1"}});
    cms.patch("applied", &pp, &Patch::Apply(&first))
        .await
        .unwrap();
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
                        "data": {"b": "2"}});
    let got = cms
        .patch("applied", &pp, &Patch::Apply(&second))
        .await
        .unwrap();
    let data = got.data.unwrap();
    assert_eq!(data["b"], "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_status_is_a_subresource() {
    let server = ApiServer::start();
    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    jobs.create(&PostParams::default(), &job("j", &[]))
        .await
        .unwrap();
    let p = json!({"status": {"active": 2}});
    let got = jobs
        .patch_status("j", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(got.status.unwrap().active, Some(2));
    let p = json!({"status": {"active": 5}, "metadata": {"labels": {"x": "y"}}});
    let got = jobs
        .patch("j", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(got.status.as_ref().unwrap().active, Some(2));
    assert_eq!(got.labels()["x"], "y");
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_can_be_created_in_any_namespace() {
    let server = ApiServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "elsewhere");
    cms.create(&PostParams::default(), &configmap("x", &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(server.client());
    let l = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(l.items[0].namespace().as_deref(), Some("elsewhere"));
    let out = server.kubectl_ok(&["get", "ns", "-o", "name"]);
    assert!(out.contains("namespace/default"), "{out}");
}

#[test]
fn kubectl_apply_of_a_changed_manifest_patches_the_existing_objects() {
    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    server.kubectl_ok(&["apply", "-f", CRD]);
    let crd = std::fs::read_to_string(CRD).unwrap();
    let changed_crd = dir.path().join("crd.yaml");
    std::fs::write(
        &changed_crd,
        crd.replace("    - st\n", "    - st\n    - stt\n"),
    )
    .unwrap();
    let out = server.kubectl_ok(&["apply", "-f", changed_crd.to_str().unwrap()]);
    assert!(out.contains("configured"), "{out}");
    let out = server.kubectl_ok(&["api-resources", "--api-group=stampede.dev"]);
    assert!(out.contains("st,stt"), "{out}");

    server.kubectl_ok(&["apply", "-f", QUICKSTART]);
    let quick = std::fs::read_to_string(QUICKSTART).unwrap();
    let changed = dir.path().join("quick.yaml");
    std::fs::write(&changed, quick.replace("rows: 5000", "rows: 6000")).unwrap();
    let out = server.kubectl_ok(&["apply", "-f", changed.to_str().unwrap()]);
    assert!(out.contains("configured"), "{out}");
    let out = server.kubectl_ok(&[
        "get",
        "st",
        "quickstart",
        "-o",
        "jsonpath={.spec.data.rows} {.metadata.generation}",
    ]);
    assert_eq!(out, "6000 2");
    server.kubectl_ok(&["delete", "-f", changed.to_str().unwrap()]);
    let out = server.kubectl(&["get", "st", "quickstart"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_wait_sees_a_status_change_made_through_kube_rs() {
    let server = ApiServer::start();
    server.kubectl_ok(&["apply", "-f", CRD]);
    server.kubectl_ok(&["apply", "-f", QUICKSTART]);
    let wait = server
        .kubectl_command()
        .args([
            "wait",
            "st/quickstart",
            "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=20s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = json!({"status": {"phase": "Succeeded"}});
    stresstests(&server)
        .patch_status("quickstart", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || wait.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The kubelet stand-in

/// Polls `f` every 50 ms until it returns Some, or panics after 20 s with `what`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job_condition(server: &ApiServer, name: &str) -> Option<(String, Value)> {
    let job = server.get("batch", "jobs", "default", name)?;
    let cond = job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == json!("Complete") || c["type"] == json!("Failed"))?
        .clone();
    Some((cond["type"].as_str()?.to_string(), job["status"].clone()))
}

fn pods_of(server: &ApiServer, job: &str) -> Vec<Value> {
    server
        .list("", "pods")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["job-name"] == json!(job))
        .collect()
}

fn indexed_job(name: &str, completions: u32, command: &[&str]) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"stampede.dev/role": "worker"}},
        "spec": {"completionMode": "Indexed", "completions": completions, "parallelism": completions,
            "backoffLimitPerIndex": 1,
            "template": {"metadata": {"labels": {"stampede.dev/role": "worker"}},
                "spec": {"restartPolicy": "Never",
                "containers": [{"name": "worker", "image": "stampede", "command": command}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_runs_one_pod_per_index_and_completes_the_job() {
    let server = ApiServer::start();
    let kubelet = Kubelet::start(&server, PathBuf::from("/bin/echo"));
    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    let job = indexed_job("idx", 3, &["sh", "-c", "echo index=$JOB_COMPLETION_INDEX"]);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let (cond, status) = eventually("job done", || job_condition(&server, "idx")).await;
    assert_eq!(cond, "Complete", "{status}");
    assert_eq!(status["succeeded"], json!(3));
    assert_eq!(status["completedIndexes"], json!("0-2"));
    let pods = pods_of(&server, "idx");
    assert_eq!(pods.len(), 3);
    let mut ips: Vec<String> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3);
    for p in &pods {
        assert_eq!(p["status"]["phase"], json!("Succeeded"));
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap();
        let name = p["metadata"]["name"].as_str().unwrap();
        assert_eq!(kubelet.logs(name).trim(), format!("index={index}"));
        let logs = server.kubectl_ok(&["logs", name]);
        assert_eq!(logs.trim(), format!("index={index}"));
    }
    let table = server.kubectl_ok(&["get", "jobs", "idx", "--no-headers"]);
    let cells: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&cells[..3], ["idx", "Complete", "3/3"]);
    // Jobs get the server's defaults (selector by controller uid), which `kubectl logs job/…`
    // uses to find a pod.
    let logs = server.kubectl_ok(&["logs", "job/idx"]);
    assert!(logs.starts_with("index="), "{logs}");
    // Pods are owned by the Job: deleting it deletes them.
    jobs.delete("idx", &DeleteParams::default()).await.unwrap();
    assert!(pods_of(&server, "idx").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_maps_stampede_to_the_given_binary_and_rewrites_mounts_env_and_listen_address()
{
    let server = ApiServer::start();
    let kubelet = Kubelet::start(&server, PathBuf::from("/bin/echo"));
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut plan = configmap("plan", &[]);
    plan.data = Some(BTreeMap::from([("stresstest.yaml".into(), "hello".into())]));
    cms.create(&PostParams::default(), &plan).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "creds"},
        "data": {"token": "czNjcmV0"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "w"},
        "spec": {"completionMode": "Indexed", "completions": 1, "backoffLimitPerIndex": 0,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "worker", "image": "stampede", "command": ["stampede"],
                    "args": ["worker", "--plan", "/plan/stresstest.yaml", "--listen", "0.0.0.0:7070"],
                    "env": [{"name": "MILVUS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                            {"name": "MILVUS_USERNAME", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "username", "optional": true}}}],
                    "volumeMounts": [{"name": "plan", "mountPath": "/plan", "readOnly": true}]}],
                "volumes": [{"name": "plan", "configMap": {"name": "plan"}}]}}}
    }))
    .unwrap();
    Api::<Job>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let (cond, status) = eventually("job done", || job_condition(&server, "w")).await;
    assert_eq!(cond, "Complete", "{status}");
    let pod = pods_of(&server, "w").pop().unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap();
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let dir = kubelet.pod_dir(name).unwrap();
    let plan_path = dir.join("plan/stresstest.yaml");
    assert_eq!(std::fs::read_to_string(&plan_path).unwrap(), "hello");
    assert_eq!(
        kubelet.logs(name).trim(),
        format!("worker --plan {} --listen {ip}:7070", plan_path.display())
    );
    assert!(ip.starts_with("127.0.0."), "{ip}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_resolves_secret_env_for_the_process() {
    let server = ApiServer::start();
    let _kubelet = Kubelet::start(&server, PathBuf::from("/bin/echo"));
    let client = server.client();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "creds"},
        "data": {"token": "czNjcmV0"}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut job = indexed_job("env", 1, &["sh", "-c", "test \"$TOKEN\" = s3cret"]);
    let c = &mut job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    c.env = Some(vec![
        serde_json::from_value(json!({"name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}))
        .unwrap(),
    ]);
    Api::<Job>::namespaced(client, "default")
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let (cond, status) = eventually("job done", || job_condition(&server, "env")).await;
    assert_eq!(cond, "Complete", "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_pod_is_recreated_until_the_backoff_limit_per_index_then_the_job_fails() {
    let server = ApiServer::start();
    let kubelet = Kubelet::start(&server, PathBuf::from("/bin/echo"));
    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    jobs.create(
        &PostParams::default(),
        &indexed_job("sleepy", 2, &["sleep", "60"]),
    )
    .await
    .unwrap();
    let running = |n: usize| {
        let r = kubelet.running();
        (r.len() == n).then_some(r)
    };
    let first = eventually("two running pods", || running(2)).await;
    let victim = first
        .iter()
        .find(|n| n.starts_with("sleepy-0-"))
        .unwrap()
        .clone();
    assert!(kubelet.kill(&victim));
    let second = eventually("a replacement pod", || {
        running(2).filter(|r| r.iter().any(|n| n.starts_with("sleepy-0-") && *n != victim))
    })
    .await;
    let replacement = second
        .iter()
        .find(|n| n.starts_with("sleepy-0-"))
        .unwrap()
        .clone();
    let killed = server.get("", "pods", "default", &victim).unwrap();
    assert_eq!(killed["status"]["phase"], json!("Failed"));
    assert!(kubelet.kill(&replacement));
    // Index 0 is out of retries; index 1 keeps running until killed too (no retry left after).
    eventually("index 0 failed", || {
        let job = server.get("batch", "jobs", "default", "sleepy")?;
        (job["status"]["failedIndexes"] == json!("0")).then_some(())
    })
    .await;
    let other = kubelet.running().pop().unwrap();
    assert!(other.starts_with("sleepy-1-"));
    assert!(kubelet.kill(&other));
    let other2 = eventually("index 1 retried", || {
        kubelet.running().pop().filter(|n| *n != other)
    })
    .await;
    assert!(kubelet.kill(&other2));
    let (cond, status) = eventually("job failed", || job_condition(&server, "sleepy")).await;
    assert_eq!(cond, "Failed", "{status}");
    assert_eq!(status["failedIndexes"], json!("0,1"));
    assert_eq!(status["failed"], json!(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_runs_the_real_stampede_binary_for_the_stampede_command() {
    let server = ApiServer::start();
    let kubelet = Kubelet::start(&server, PathBuf::from(env!("CARGO_BIN_EXE_stampede")));
    let mut job = indexed_job("version", 1, &["stampede"]);
    job.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .args = Some(vec!["--version".into()]);
    Api::<Job>::namespaced(server.client(), "default")
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let (cond, status) = eventually("job done", || job_condition(&server, "version")).await;
    assert_eq!(cond, "Complete", "{status}");
    let pod = pods_of(&server, "version").pop().unwrap();
    let logs = kubelet.logs(pod["metadata"]["name"].as_str().unwrap());
    assert!(logs.starts_with("stampede "), "{logs}");
}
