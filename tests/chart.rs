//! The Helm chart, checked with the real Helm engine (`scripts/helm.sh`: Helm v4's Go SDK from
//! PyPI): it lints, it renders with default and non-default values, every rendered object parses
//! strictly into its k8s-openapi type (an unknown field or a wrong type fails), the controller
//! runs locked down with its probes, flags and least-privilege RBAC, and the chart's CRDs are the
//! generated ones.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, PodSpec, Service, ServiceAccount, Toleration,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::{Value, json};

use support::chart::{
    NAMESPACE, allows, chart_dir, cluster_rules, crate_dir, granted_rules, helm, helm_template,
    helm_template_args, objects_of_kind, only_object, parse_strict, rendered_objects,
};

/// Values that differ from every default the tests look at.
const NON_DEFAULT: &[&str] = &[
    "--set",
    "watchNamespaces={milvus-tests}",
    "--set",
    "leaderElection.enabled=false",
    "--set",
    "rbac.readNodes=false",
    "--set",
    "image.repository=registry.example.com/team/stampede",
    "--set-string",
    "image.tag=2.0.1",
    "--set",
    "image.pullPolicy=Always",
    "--set",
    "workerImage=registry.example.com/team/stampede-worker:2.0.1",
    "--set",
    "logLevel=debug",
    "--set",
    "logFormat=text",
    "--set",
    "replicaCount=2",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.serviceMonitor.labels.release=kube-prometheus",
    "--set",
    "nodeSelector.kubernetes\\.io/os=linux",
    "--set",
    "nodeSelector.stampede\\.dev/controller=true",
    "--set",
    "workers.nodeSelector.stampede\\.dev/load=true",
    "--set-json",
    r#"workers.tolerations=[{"key":"dedicated","operator":"Equal","value":"load","effect":"NoSchedule"}]"#,
    "--set-json",
    r#"workers.affinity={"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app":"milvus"}}}}]}}"#,
    "--set-json",
    r#"tolerations=[{"key":"CriticalAddonsOnly","operator":"Exists"}]"#,
    "--set-json",
    r#"resources={"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"cpu":"1","memory":"512Mi"}}"#,
];

fn render_non_default() -> String {
    helm_template_args(NON_DEFAULT).unwrap_or_else(|e| panic!("helm template failed:\n{e}"))
}

/// Parses every rendered object into its type and returns the kinds in order.
fn parse_every_object(yaml: &str) -> Vec<String> {
    let objects = rendered_objects(yaml);
    for object in &objects {
        match object["kind"].as_str().unwrap_or_default() {
            "Deployment" => drop(parse_strict::<Deployment>(object)),
            "ServiceAccount" => drop(parse_strict::<ServiceAccount>(object)),
            "Service" => drop(parse_strict::<Service>(object)),
            "ClusterRole" => drop(parse_strict::<ClusterRole>(object)),
            "ClusterRoleBinding" => drop(parse_strict::<ClusterRoleBinding>(object)),
            "Role" => drop(parse_strict::<Role>(object)),
            "RoleBinding" => drop(parse_strict::<RoleBinding>(object)),
            "ServiceMonitor" => check_service_monitor_shape(object),
            other => panic!("the chart renders a {other} this test does not know"),
        }
    }
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// ServiceMonitor has no k8s-openapi type: check the fields of monitoring.coreos.com/v1 the
/// chart sets, and nothing else.
fn check_service_monitor_shape(monitor: &Value) {
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let keys =
        |v: &Value| -> Vec<String> { v.as_object().expect("a mapping").keys().cloned().collect() };
    assert_eq!(keys(monitor), ["apiVersion", "kind", "metadata", "spec"]);
    assert_eq!(keys(&monitor["metadata"]), ["labels", "name", "namespace"]);
    assert_eq!(
        keys(&monitor["spec"]),
        ["endpoints", "namespaceSelector", "selector"]
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({"matchNames": [NAMESPACE]})
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("a list");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(
        keys(&endpoints[0]),
        ["interval", "path", "port", "scheme", "scrapeTimeout"]
    );
    for key in ["interval", "path", "port", "scheme", "scrapeTimeout"] {
        assert!(endpoints[0][key].is_string(), "endpoints[0].{key}");
    }
}

fn deployment(yaml: &str) -> Deployment {
    parse_strict(only_object(&rendered_objects(yaml), "Deployment"))
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    deployment
        .spec
        .template
        .spec
        .clone()
        .expect("the Deployment has a pod spec")
}

fn controller(deployment: &Deployment) -> Container {
    let containers = pod_spec(deployment).containers;
    assert_eq!(containers.len(), 1, "one container");
    containers[0].clone()
}

/// The container's env as name → literal value ("<fieldRef:PATH>" for a downward API value).
fn env(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(
            |EnvVar {
                 name,
                 value,
                 value_from,
             }| {
                let shown = match (value, value_from) {
                    (Some(v), None) => v.clone(),
                    (None, Some(from)) => format!(
                        "<fieldRef:{}>",
                        from.field_ref
                            .as_ref()
                            .map(|f| f.field_path.as_str())
                            .unwrap_or("?")
                    ),
                    other => panic!("env {name}: unexpected {other:?}"),
                };
                (name.clone(), shown)
            },
        )
        .collect()
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// The controller's rights, apart from its Lease (see README "Security").
fn controller_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["stampede.dev"],
            &["stresstests"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(
            &["stampede.dev"],
            &["stresstests/status"],
            &["get", "update", "patch"],
        ),
        rule(
            &["stampede.dev"],
            &["stresstestschedules"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["stampede.dev"],
            &["stresstestschedules/status"],
            &["get", "update", "patch"],
        ),
        rule(
            &["batch"],
            &["jobs"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            &[""],
            &["configmaps"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(&[""], &["pods"], &["get", "list", "watch"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(&[""], &["events"], &["create", "patch"]),
    ]
}

/// `get` on nodes: their allocatable CPU and memory when the Milvus pods set no limits
/// (`rbac.readNodes`, default true; cluster-wide, nodes are cluster-scoped).
fn node_rule() -> PolicyRule {
    rule(&[""], &["nodes"], &["get"])
}

fn lease_rule() -> PolicyRule {
    rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "create", "update", "patch"],
    )
}

#[test]
fn the_chart_lints_cleanly() {
    for extra in [&[][..], NON_DEFAULT] {
        let mut args = vec!["lint", "charts/stampede", "--strict"];
        args.extend_from_slice(extra);
        let out = helm(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm lint {extra:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{stdout}"
        );
        assert!(!stdout.contains("[WARNING]"), "{stdout}");
        assert!(!stdout.contains("[ERROR]"), "{stdout}");
    }
}

#[test]
fn a_chart_with_a_broken_template_fails_the_lint() {
    // The lint must be the real engine, not a stand-in that accepts anything.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = dir.path().join("stampede");
    copy_dir(&chart_dir(), &copy);
    std::fs::write(
        copy.join("templates/broken.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.missing.deeper }}\n",
    )
    .expect("write the broken template");
    let out = helm(&["lint", copy.to_str().expect("a UTF-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[ERROR] templates/: stampede/templates/broken.yaml:4:18"),
        "{stdout}"
    );
    assert!(
        stdout.contains("nil pointer evaluating interface {}.deeper"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 chart(s) linted, 1 chart(s) failed"),
        "{stdout}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the chart") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a chart file");
        }
    }
}

#[test]
fn every_object_rendered_with_default_values_parses_strictly_into_its_kubernetes_type() {
    let kinds = parse_every_object(&helm_template(&[]));
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment"
        ]
    );
}

#[test]
fn every_object_rendered_with_non_default_values_parses_strictly_into_its_kubernetes_type() {
    let kinds = parse_every_object(&render_non_default());
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "ServiceMonitor"
        ]
    );
}

#[test]
fn the_strict_parse_rejects_an_unknown_field_and_a_wrong_type() {
    let objects = rendered_objects(&helm_template(&[]));
    let mut object = only_object(&objects, "Deployment").clone();
    object["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] =
        json!("/healthz");
    let unknown = std::panic::catch_unwind(|| parse_strict::<Deployment>(&object))
        .expect_err("an unknown field fails");
    let message = unknown
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("unknown fields\n  left: [\"spec.template.spec.containers.0.livenessProbe.httpGet.paht\"]"),
        "{message}"
    );

    let mut object = only_object(&objects, "Deployment").clone();
    object["spec"]["replicas"] = json!("one");
    assert!(std::panic::catch_unwind(|| parse_strict::<Deployment>(&object)).is_err());
}

#[test]
fn the_controller_runs_non_root_with_a_read_only_root_filesystem_and_no_privileges() {
    for yaml in [helm_template(&[]), render_non_default()] {
        let deployment = deployment(&yaml);
        let pod = pod_spec(&deployment);
        let pod_security = pod
            .security_context
            .clone()
            .expect("a pod security context");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(65532));
        assert_eq!(
            pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        let security = controller(&deployment)
            .security_context
            .expect("a container security context");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.privileged, Some(false));
        assert_eq!(
            security.capabilities.clone().and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(security.capabilities.and_then(|c| c.add), None);
        assert_eq!(
            security.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(pod.host_network, None);
        assert_eq!(pod.service_account_name.as_deref(), Some("stampede"));
    }
}

#[test]
fn the_probes_ask_healthz_and_readyz_on_the_named_health_port() {
    let container = controller(&deployment(&helm_template(&[])));
    let ports = container.ports.clone().expect("container ports");
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0].name.as_deref(), Some("http-health"));
    assert_eq!(ports[0].container_port, 8080);
    assert_eq!(ports[1].name.as_deref(), Some("http-dashboard"));
    assert_eq!(ports[1].container_port, 8089);
    let probe_target = |probe: Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.and_then(|p| p.http_get).expect("an httpGet probe");
        (
            get.path.expect("a path"),
            serde_json::to_value(get.port).expect("a port"),
        )
    };
    assert_eq!(
        probe_target(container.liveness_probe.clone()),
        ("/healthz".to_string(), json!("http-health"))
    );
    assert_eq!(
        probe_target(container.readiness_probe.clone()),
        ("/readyz".to_string(), json!("http-health"))
    );
    assert_eq!(
        env(&container)["STAMPEDE_HEALTH_ADDR"],
        "0.0.0.0:8080",
        "the probes and /metrics are served on the port they ask"
    );
}

#[test]
fn the_default_controller_watches_every_namespace_elects_a_leader_and_logs_json() {
    let container = controller(&deployment(&helm_template(&[])));
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/stampede-dev/stampede:0.1.0")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(container.args, Some(vec!["controller".to_string()]));
    let expected: BTreeMap<String, String> = [
        ("POD_NAME", "<fieldRef:metadata.name>"),
        ("POD_NAMESPACE", "<fieldRef:metadata.namespace>"),
        ("STAMPEDE_IMAGE", "ghcr.io/stampede-dev/stampede:0.1.0"),
        ("STAMPEDE_WORKER_PORT", "7070"),
        ("STAMPEDE_HEALTH_ADDR", "0.0.0.0:8080"),
        ("STAMPEDE_DASHBOARD_ADDR", "0.0.0.0:8089"),
        ("STAMPEDE_LEADER_ELECT", "true"),
        ("STAMPEDE_LEASE_NAME", "stampede"),
        ("STAMPEDE_LOG", "info"),
        ("STAMPEDE_LOG_FORMAT", "json"),
        (
            "STAMPEDE_WORKER_SCHEDULING",
            r#"{"affinity":{},"nodeSelector":{},"tolerations":[]}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env(&container), expected);
    let replicas = deployment(&helm_template(&[])).spec.replicas;
    assert_eq!(replicas, Some(1));
}

#[test]
fn the_default_rbac_is_the_least_privilege_list_cluster_wide_and_the_lease_in_the_release_namespace()
 {
    let yaml = helm_template(&[]);
    let granted = granted_rules(&yaml);
    let cluster: Vec<PolicyRule> = granted
        .iter()
        .filter(|g| g.namespace.is_none())
        .map(|g| g.rule.clone())
        .collect();
    let mut expected = controller_rules();
    expected.push(node_rule());
    assert_eq!(cluster, expected);
    let namespaced: Vec<(Option<String>, PolicyRule)> = granted
        .iter()
        .filter(|g| g.namespace.is_some())
        .map(|g| (g.namespace.clone(), g.rule.clone()))
        .collect();
    assert_eq!(namespaced, [(Some(NAMESPACE.to_string()), lease_rule())]);

    let rules = cluster_rules(&yaml);
    assert!(allows(&rules, "batch", "jobs", "create"));
    assert!(allows(
        &rules,
        "stampede.dev",
        "stresstests/status",
        "patch"
    ));
    assert!(!allows(&rules, "", "secrets", "get"), "no Secret is read");
    assert!(!allows(&rules, "", "pods", "delete"));
    assert!(allows(&rules, "", "nodes", "get"));
    assert!(
        !allows(&rules, "", "nodes", "list"),
        "nodes are read by name"
    );
    for r in &rules {
        assert!(!r.verbs.iter().any(|v| v == "*"), "no wildcard verb: {r:?}");
        assert!(!r.resources.iter().flatten().any(|v| v == "*"));
    }

    // Every binding names the controller's ServiceAccount and only it.
    let objects = rendered_objects(&yaml);
    let binding: ClusterRoleBinding = parse_strict(only_object(&objects, "ClusterRoleBinding"));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "stampede");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "stampede");
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    let lease_binding: RoleBinding = parse_strict(only_object(&objects, "RoleBinding"));
    assert_eq!(lease_binding.role_ref.name, "stampede-leader-election");
    assert_eq!(lease_binding.metadata.namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn one_watch_namespace_becomes_the_namespace_env_and_a_role_in_that_namespace() {
    let yaml = helm_template(&[("watchNamespaces[0]", "milvus-tests")]);
    let container = controller(&deployment(&yaml));
    assert_eq!(env(&container)["STAMPEDE_NAMESPACE"], "milvus-tests");
    let objects = rendered_objects(&yaml);
    // The only cluster-wide right: `get` on nodes, which no Role can grant.
    let node_role: ClusterRole = parse_strict(only_object(&objects, "ClusterRole"));
    assert_eq!(node_role.metadata.name.as_deref(), Some("stampede-nodes"));
    assert_eq!(node_role.rules, Some(vec![node_rule()]));
    let node_binding: ClusterRoleBinding =
        parse_strict(only_object(&objects, "ClusterRoleBinding"));
    assert_eq!(node_binding.role_ref.name, "stampede-nodes");
    let subjects = node_binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "stampede");
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    let granted = granted_rules(&yaml);
    let cluster_wide: Vec<PolicyRule> = granted
        .iter()
        .filter(|g| g.namespace.is_none())
        .map(|g| g.rule.clone())
        .collect();
    assert_eq!(cluster_wide, [node_rule()]);
    let in_watched: Vec<PolicyRule> = granted
        .iter()
        .filter(|g| g.namespace.as_deref() == Some("milvus-tests"))
        .map(|g| g.rule.clone())
        .collect();
    assert_eq!(in_watched, controller_rules());
    let in_release: Vec<PolicyRule> = granted
        .iter()
        .filter(|g| g.namespace.as_deref() == Some(NAMESPACE))
        .map(|g| g.rule.clone())
        .collect();
    assert_eq!(in_release, [lease_rule()]);
    assert_eq!(granted.len(), controller_rules().len() + 2);
    let bindings: Vec<RoleBinding> = objects_of_kind(&objects, "RoleBinding")
        .into_iter()
        .map(parse_strict)
        .collect();
    let placed: Vec<(Option<String>, String)> = bindings
        .iter()
        .map(|b| (b.metadata.namespace.clone(), b.role_ref.name.clone()))
        .collect();
    assert_eq!(
        placed,
        [
            (Some("milvus-tests".to_string()), "stampede".to_string()),
            (
                Some(NAMESPACE.to_string()),
                "stampede-leader-election".to_string()
            )
        ]
    );
}

#[test]
fn read_nodes_false_grants_no_right_on_nodes_in_either_mode() {
    for values in [
        vec![("rbac.readNodes", "false")],
        vec![
            ("rbac.readNodes", "false"),
            ("watchNamespaces[0]", "milvus-tests"),
        ],
    ] {
        let yaml = helm_template(&values);
        let rules = cluster_rules(&yaml);
        assert!(!allows(&rules, "", "nodes", "get"), "{values:?}");
        assert!(allows(&rules, "", "pods", "list"), "{values:?}");
    }
    let namespaced = helm_template(&[
        ("rbac.readNodes", "false"),
        ("watchNamespaces[0]", "milvus-tests"),
    ]);
    let objects = rendered_objects(&namespaced);
    assert!(objects_of_kind(&objects, "ClusterRole").is_empty());
    assert!(objects_of_kind(&objects, "ClusterRoleBinding").is_empty());
}

#[test]
fn more_than_one_watch_namespace_is_refused_with_a_message() {
    let stderr = helm_template_args(&["--set", "watchNamespaces={a,b}"])
        .expect_err("two namespaces cannot be watched");
    assert!(
        stderr.contains(
            "watchNamespaces: the controller watches one namespace or all of them, not 2 (a, b)"
        ),
        "{stderr}"
    );
}

#[test]
fn worker_scheduling_values_reach_stampede_worker_scheduling_as_valid_json() {
    let container = controller(&deployment(&render_non_default()));
    let scheduling: Value = serde_json::from_str(&env(&container)["STAMPEDE_WORKER_SCHEDULING"])
        .expect("STAMPEDE_WORKER_SCHEDULING is JSON");
    assert_eq!(
        scheduling,
        json!({
            "nodeSelector": {"stampede.dev/load": "true"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "load", "effect": "NoSchedule"}
            ],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app": "milvus"}}}}
            ]}}
        })
    );
    // The pieces are what a PodSpec takes.
    let _: Vec<Toleration> = parse_strict(&scheduling["tolerations"]);
    let _: Affinity = parse_strict(&scheduling["affinity"]);
    let _: BTreeMap<String, String> = parse_strict(&scheduling["nodeSelector"]);

    // The controller's own scheduling is separate.
    let pod = pod_spec(&deployment(&render_non_default()));
    // `--set …=true` gives a boolean; the chart makes it the string a nodeSelector takes.
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("stampede.dev/controller".to_string(), "true".to_string())
        ]))
    );
    let tolerations = pod.tolerations.expect("controller tolerations");
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].key.as_deref(), Some("CriticalAddonsOnly"));
    assert_eq!(pod.affinity, None);
}

#[test]
fn non_default_values_set_the_image_log_replicas_and_turn_leader_election_off() {
    let yaml = render_non_default();
    let deployment = deployment(&yaml);
    assert_eq!(deployment.spec.replicas, Some(2));
    let container = controller(&deployment);
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.com/team/stampede:2.0.1")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(container.args, Some(vec!["controller".to_string()]));
    let env = env(&container);
    assert_eq!(
        env["STAMPEDE_IMAGE"],
        "registry.example.com/team/stampede-worker:2.0.1"
    );
    assert_eq!(env["STAMPEDE_LEADER_ELECT"], "false");
    assert!(!env.contains_key("STAMPEDE_LEASE_NAME"));
    assert_eq!(env["STAMPEDE_LOG"], "debug");
    assert_eq!(env["STAMPEDE_LOG_FORMAT"], "text");
    assert_eq!(env["STAMPEDE_NAMESPACE"], "milvus-tests");
    let resources = serde_json::to_value(container.resources).expect("resources serialize");
    assert_eq!(
        resources,
        json!({"requests": {"cpu": "100m", "memory": "128Mi"},
               "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    // Without leader election there is no Lease to grant.
    let granted = granted_rules(&yaml);
    assert!(granted.iter().all(|g| g.rule != lease_rule()));
}

#[test]
fn the_worker_image_defaults_to_the_controller_image() {
    let container = controller(&deployment(&helm_template(&[
        ("image.repository", "registry.example.com/stampede"),
        ("image.tag", "abc123"),
    ])));
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.com/stampede:abc123")
    );
    assert_eq!(
        env(&container)["STAMPEDE_IMAGE"],
        "registry.example.com/stampede:abc123"
    );
}

#[test]
fn the_metrics_service_exposes_port_8080_and_the_service_monitor_scrapes_it_when_enabled() {
    let objects = rendered_objects(&helm_template(&[]));
    assert!(objects_of_kind(&objects, "ServiceMonitor").is_empty());
    let service: Service = parse_strict(only_object(&objects, "Service"));
    let spec = service.spec.expect("a service spec");
    let ports = spec.ports.expect("ports");
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0].name.as_deref(), Some("http-metrics"));
    assert_eq!(ports[0].port, 8080);
    assert_eq!(
        serde_json::to_value(&ports[0].target_port).expect("a port"),
        json!("http-health")
    );
    assert_eq!(ports[1].name.as_deref(), Some("dashboard"));
    assert_eq!(ports[1].port, 8089);
    assert_eq!(
        serde_json::to_value(&ports[1].target_port).expect("a port"),
        json!("http-dashboard")
    );
    // Off: no port, and the controller is told so.
    let off = rendered_objects(&helm_template(&[("dashboard.enabled", "false")]));
    let off_service: Service = parse_strict(only_object(&off, "Service"));
    assert_eq!(
        off_service.spec.and_then(|s| s.ports).map(|p| p.len()),
        Some(1)
    );
    assert_eq!(
        env(&controller(&parse_strict(only_object(&off, "Deployment"))))["STAMPEDE_DASHBOARD_ADDR"],
        "off"
    );
    let deployment: Deployment = parse_strict(only_object(&objects, "Deployment"));
    let pod_labels = deployment
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("pod labels");
    for (k, v) in spec.selector.expect("a selector") {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "the Service selects the controller pod"
        );
    }

    let objects = rendered_objects(&render_non_default());
    let monitor = only_object(&objects, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "http-metrics", "path": "/metrics", "scheme": "http",
                "interval": "30s", "scrapeTimeout": "10s"}])
    );
    let service: Service = parse_strict(only_object(&objects, "Service"));
    let service_labels = service.metadata.labels.expect("service labels");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            service_labels.get(k).map(String::as_str),
            v.as_str(),
            "the ServiceMonitor selects the metrics Service"
        );
    }
}

#[test]
fn the_controller_accepts_the_arguments_and_environment_the_chart_renders() {
    // The real binary reads the rendered args and env; with no cluster to reach it gets as far
    // as connecting, so every flag and variable (worker scheduling JSON included) was accepted.
    for yaml in [helm_template(&[]), render_non_default()] {
        let container = controller(&deployment(&yaml));
        let home = tempfile::tempdir().expect("a temporary HOME");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stampede"));
        command
            .args(container.args.clone().unwrap_or_default())
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECONFIG", home.path().join("no-kubeconfig"));
        for (name, value) in env(&container) {
            let value = match value.as_str() {
                "<fieldRef:metadata.name>" => "stampede-0".to_string(),
                "<fieldRef:metadata.namespace>" => NAMESPACE.to_string(),
                _ => value,
            };
            command.env(name, value);
        }
        let out = command.output().expect("run stampede controller");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with("error: cannot connect to the Kubernetes API"),
            "{stderr}"
        );
    }
}

#[test]
fn a_misspelled_or_wrongly_typed_value_is_refused_by_the_values_schema() {
    let stderr = helm_template_args(&[
        "--set",
        "watchNamespace=tests",
        "--set",
        "logFormat=yaml",
        "--set",
        "workers.nodeSelecter.a=b",
    ])
    .expect_err("the values schema refuses these");
    for needle in [
        "additional properties 'watchNamespace' not allowed",
        "at '/logFormat': value must be one of 'json', 'text'",
        "at '/workers': additional properties 'nodeSelecter' not allowed",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
}

#[test]
fn the_chart_crds_are_identical_to_the_generated_crds() {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    let top = crate_dir().join("crds");
    let chart = chart_dir().join("crds");
    let top_names = names(&top);
    assert!(top_names.contains(&"stresstest.yaml".to_string()));
    assert_eq!(
        names(&chart),
        top_names,
        "charts/stampede/crds/ has other files than crds/: run `cp crds/*.yaml charts/stampede/crds/`"
    );
    for name in &top_names {
        let want = std::fs::read_to_string(top.join(name)).expect("read a generated CRD");
        let have = std::fs::read_to_string(chart.join(name)).expect("read a chart CRD");
        assert!(
            want == have,
            "charts/stampede/crds/{name} differs from crds/{name}: run `cp crds/*.yaml charts/stampede/crds/`"
        );
    }
}

#[test]
fn the_chart_installs_the_crds_and_its_app_version_is_the_crate_version() {
    let out = helm_template_args(&["--include-crds"]).expect("helm template --include-crds");
    let crds: Vec<String> = rendered_objects(&out)
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        crds.contains(&"stresstests.stampede.dev".to_string()),
        "{crds:?}"
    );
    let chart: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("read Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_notes_tell_what_to_apply_next() {
    let notes =
        std::fs::read_to_string(chart_dir().join("templates/NOTES.txt")).expect("read NOTES.txt");
    for needle in [
        "rollout status deployment/",
        "-f examples/quickstart.yaml",
        "kubectl get st",
        "status.report.configMap",
    ] {
        assert!(notes.contains(needle), "NOTES.txt lacks {needle:?}");
    }
}
