//! The objects the controller creates for a StressTest, built by pure functions (spec in,
//! objects out): the plan ConfigMap, the prepare Job and the indexed worker Job.
//!
//! # Names
//!
//! Children are named `<test>-plan`, `<test>-prepare` and `<test>-workers`. A StressTest name
//! may be a DNS subdomain of up to 253 characters, but a Job name ends up in a label value and
//! in pod host names, which allow 63 characters and no dots. So when `<test>-<suffix>` is not a
//! DNS label of at most 63 characters, the child is named `<prefix>-<hash>-<suffix>`: `<hash>`
//! is 8 hex digits of the 32-bit FNV-1a hash of the full test name (stable across builds and
//! versions), `<prefix>` is the test name with dots turned into dashes, cut so the whole name is
//! 63 characters, without trailing dashes. Two long names that share a prefix still get
//! different children, and one name always gets the same ones. The `stampede.dev/test` label
//! value is the test name itself when it has at most 63 characters (label values may contain
//! dots), else `<prefix>-<hash>` cut the same way.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::spec::{LoadModel, Replicas, StressTest, StressTestSpec};

/// Key of the plan ConfigMap that holds the StressTest manifest.
pub const PLAN_KEY: &str = "stresstest.yaml";
/// Where the plan ConfigMap is mounted in prepare and worker pods.
pub const PLAN_DIR: &str = "/plan";
/// The manifest path inside prepare and worker pods.
pub const PLAN_PATH: &str = "/plan/stresstest.yaml";
/// Where prepare writes prepare.json and ground_truth.json (an emptyDir).
pub const RESULTS_DIR: &str = "/results";
/// Where the CA bundle of `spec.target.tls.caSecret` is mounted.
pub const CA_DIR: &str = "/etc/stampede/ca";
/// The port each worker serves gRPC on.
pub const WORKER_PORT: i32 = 7070;
/// Name of the worker's gRPC port.
pub const WORKER_PORT_NAME: &str = "grpc";
/// User and group the containers run as (distroless `nonroot`): a numeric id lets the kubelet
/// enforce runAsNonRoot whatever the image's USER line says.
pub const RUN_AS_USER: i64 = 65532;
/// Retries of the prepare Job (prepare is idempotent and resumes where it stopped).
pub const PREPARE_BACKOFF_LIMIT: i32 = 2;
/// Retries of each worker index.
pub const WORKER_BACKOFF_LIMIT_PER_INDEX: i32 = 1;

/// Label: the application.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: the tool managing the object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the StressTest a child belongs to (see [`test_label_value`]).
pub const LABEL_TEST: &str = "stampede.dev/test";
/// Label: what the child is for: `plan`, `prepare` or `worker`.
pub const LABEL_ROLE: &str = "stampede.dev/role";
/// Annotation: the StressTest generation a child was built from.
pub const ANNOTATION_GENERATION: &str = "stampede.dev/generation";
/// Value of [`LABEL_NAME`] and [`LABEL_MANAGED_BY`].
pub const APP: &str = "stampede";

/// The role of a child object, as in its [`LABEL_ROLE`] label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The plan ConfigMap.
    Plan,
    /// The prepare Job and its pod.
    Prepare,
    /// The worker Job and its pods.
    Worker,
    /// The cleanup Job (drops the collection) and its pod.
    Cleanup,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Plan => "plan",
            Role::Prepare => "prepare",
            Role::Worker => "worker",
            Role::Cleanup => "cleanup",
        }
    }
}

/// Why a child object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The StressTest lacks metadata the API server always sets.
    #[error(
        "the StressTest has no metadata.{0}; children can only be built for an object read from the API server"
    )]
    MissingMetadata(&'static str),
    /// The manifest could not be written as YAML.
    #[error("cannot write the plan of StressTest {name} as YAML: {source}")]
    Manifest {
        /// The StressTest.
        name: String,
        /// The serialiser's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
}

const MAX_NAME: usize = 63;
const HASH_LEN: usize = 8;

/// 32-bit FNV-1a: a hash that is the same on every build, unlike std's `DefaultHasher`.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// `name` cut to at most `max` characters, without trailing characters a label may not end in.
fn prefix_of(name: &str, max: usize) -> String {
    let cut: String = name.chars().take(max).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// A child's name: `<test>-<suffix>`, or `<prefix>-<hash>-<suffix>` when that is not a DNS label
/// of at most 63 characters (see the module documentation).
pub fn child_name(test: &str, suffix: &str) -> String {
    let plain = format!("{test}-{suffix}");
    if is_dns_label(&plain) {
        return plain;
    }
    let hash = format!("{:08x}", fnv1a(test));
    let room = MAX_NAME.saturating_sub(HASH_LEN + suffix.len() + 2);
    let sanitized: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let prefix = prefix_of(&sanitized, room);
    if prefix.is_empty() {
        format!("{hash}-{suffix}")
    } else {
        format!("{prefix}-{hash}-{suffix}")
    }
}

/// The value of the [`LABEL_TEST`] label: the test name, or `<prefix>-<hash>` when it is longer
/// than a label value may be (63 characters).
pub fn test_label_value(test: &str) -> String {
    if test.len() <= MAX_NAME {
        return test.to_string();
    }
    let hash = format!("{:08x}", fnv1a(test));
    let prefix = prefix_of(test, MAX_NAME - HASH_LEN - 1);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// Name of the plan ConfigMap: `<test>-plan`.
pub fn plan_configmap_name(test: &str) -> String {
    child_name(test, "plan")
}

/// Name of the prepare Job: `<test>-prepare`.
pub fn prepare_job_name(test: &str) -> String {
    child_name(test, "prepare")
}

/// Name of the worker Job: `<test>-workers`.
pub fn worker_job_name(test: &str) -> String {
    child_name(test, "workers")
}

/// Name of the cleanup Job: `<test>-cleanup`.
pub fn cleanup_job_name(test: &str) -> String {
    child_name(test, "cleanup")
}

/// Labels of a child of `test` (also the selector of its pods, together with the Job's own).
pub fn child_labels(test: &str, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP.to_string()),
        (LABEL_MANAGED_BY.to_string(), APP.to_string()),
        (LABEL_TEST.to_string(), test_label_value(test)),
        (LABEL_ROLE.to_string(), role.as_str().to_string()),
    ])
}

/// A label selector string for the children of `test` with `role`, e.g. to list worker pods.
pub fn child_selector(test: &str, role: Role) -> String {
    format!(
        "{LABEL_TEST}={},{LABEL_ROLE}={}",
        test_label_value(test),
        role.as_str()
    )
}

/// Worker pods for a spec: `replicas` when fixed, else ⌈peak users / maxUsersPerWorker⌉ (Closed)
/// or ⌈peak rate / maxRatePerWorker⌉ (Open); at least 1.
pub fn worker_count(spec: &StressTestSpec) -> u32 {
    if let Replicas::Fixed(n) = spec.workers.replicas {
        return n.max(1);
    }
    let needed = match spec.workload.model {
        LoadModel::Closed => {
            let peak = spec
                .stages
                .iter()
                .filter_map(|s| s.users)
                .max()
                .unwrap_or(0);
            peak.div_ceil(spec.workers.max_users_per_worker.max(1))
        }
        LoadModel::Open => {
            let peak = spec
                .stages
                .iter()
                .filter_map(|s| s.rate)
                .filter(|r| r.is_finite())
                .fold(0.0_f64, f64::max);
            let per_worker = spec.workers.max_rate_per_worker;
            if per_worker.is_finite() && per_worker > 0.0 {
                // Forgive float noise: 0.7 / 0.1 = 6.999999999999999 must not need 8 workers,
                // nor 10000.000000000002 / 5000 three. The cast saturates.
                (peak / per_worker * (1.0 - 1e-12)).ceil() as u32
            } else {
                1
            }
        }
    };
    needed.max(1)
}

/// The identity every builder needs: name, namespace, and an owner reference to the test.
struct Owner {
    name: String,
    namespace: String,
    generation: Option<i64>,
    owner_ref: OwnerReference,
}

fn owner(st: &StressTest) -> Result<Owner, BuildError> {
    let name = st
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = st
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    if st.metadata.uid.is_none() {
        return Err(BuildError::MissingMetadata("uid"));
    }
    let owner_ref = st
        .controller_owner_ref(&())
        .map(|r| OwnerReference {
            block_owner_deletion: Some(true),
            ..r
        })
        .ok_or(BuildError::MissingMetadata("uid"))?;
    Ok(Owner {
        name,
        namespace,
        generation: st.metadata.generation,
        owner_ref,
    })
}

impl Owner {
    fn metadata(&self, name: String, role: Role) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(child_labels(&self.name, role)),
            annotations: self
                .generation
                .map(|g| BTreeMap::from([(ANNOTATION_GENERATION.to_string(), g.to_string())])),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The plan ConfigMap `<test>-plan`: the StressTest manifest (name, namespace and spec with
/// every default written out) under [`PLAN_KEY`], read by prepare and the workers. Credentials
/// never go here; they come from the Secret through env.
pub fn plan_configmap(st: &StressTest) -> Result<ConfigMap, BuildError> {
    let o = owner(st)?;
    let mut plan = StressTest::new(&o.name, st.spec.clone());
    plan.metadata.namespace = Some(o.namespace.clone());
    let yaml = serde_yaml_ng::to_string(&plan).map_err(|source| BuildError::Manifest {
        name: o.name.clone(),
        source,
    })?;
    Ok(ConfigMap {
        metadata: o.metadata(plan_configmap_name(&o.name), Role::Plan),
        data: Some(BTreeMap::from([(PLAN_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// The prepare Job `<test>-prepare`: `stampede prepare -f /plan/stresstest.yaml -o /results`,
/// retried twice (prepare resumes), cleaned up after `spec.cleanup.ttlSecondsAfterFinished`.
pub fn prepare_job(st: &StressTest, image: &str) -> Result<Job, BuildError> {
    let o = owner(st)?;
    let container = Container {
        name: "prepare".to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["stampede".to_string()]),
        args: Some(
            ["prepare", "-f", PLAN_PATH, "-o", RESULTS_DIR]
                .map(str::to_string)
                .to_vec(),
        ),
        env: non_empty(target_env(&st.spec)),
        volume_mounts: Some(volume_mounts(&st.spec, true)),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    Ok(Job {
        metadata: o.metadata(prepare_job_name(&o.name), Role::Prepare),
        spec: Some(JobSpec {
            backoff_limit: Some(PREPARE_BACKOFF_LIMIT),
            ttl_seconds_after_finished: ttl(&st.spec),
            template: pod_template(&o, Role::Prepare, container, volumes(&st.spec, &o, true)),
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The cleanup Job `<test>-cleanup`: `stampede cleanup -f /plan/stresstest.yaml`, which drops
/// the collection (`spec.cleanup.dropCollection`). Retried twice; a collection that is already
/// gone counts as dropped.
pub fn cleanup_job(st: &StressTest, image: &str) -> Result<Job, BuildError> {
    let o = owner(st)?;
    let container = Container {
        name: "cleanup".to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["stampede".to_string()]),
        args: Some(["cleanup", "-f", PLAN_PATH].map(str::to_string).to_vec()),
        env: non_empty(target_env(&st.spec)),
        volume_mounts: Some(volume_mounts(&st.spec, false)),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    Ok(Job {
        metadata: o.metadata(cleanup_job_name(&o.name), Role::Cleanup),
        spec: Some(JobSpec {
            backoff_limit: Some(PREPARE_BACKOFF_LIMIT),
            ttl_seconds_after_finished: ttl(&st.spec),
            template: pod_template(&o, Role::Cleanup, container, volumes(&st.spec, &o, false)),
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// Where the prepare, worker and cleanup pods may run: set on the controller (the chart's
/// `workers.nodeSelector`, `workers.tolerations` and `workers.affinity`), not per test.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Node and pod affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
}

impl Placement {
    /// Parses the JSON form, e.g. `{"nodeSelector":{"pool":"load"},"tolerations":[...]}`.
    pub fn from_json(text: &str) -> Result<Placement, String> {
        if text.trim().is_empty() {
            return Ok(Placement::default());
        }
        serde_json::from_str(text).map_err(|e| {
            format!(
                "--worker-scheduling is not a JSON object with nodeSelector, tolerations and affinity: {e}"
            )
        })
    }

    /// Sets the placement on a Job's pod template.
    pub fn apply(&self, job: &mut Job) {
        let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
            return;
        };
        if !self.node_selector.is_empty() {
            pod.node_selector = Some(self.node_selector.clone());
        }
        if !self.tolerations.is_empty() {
            pod.tolerations = Some(self.tolerations.clone());
        }
        if self.affinity.is_some() {
            pod.affinity = self.affinity.clone();
        }
    }
}

/// The worker Job `<test>-workers`: Indexed, `workers` pods at once (`JOB_COMPLETION_INDEX` is
/// the shard, `STAMPEDE_SHARDS` the shard count), each serving gRPC on port 7070 and running
/// `stampede worker --plan /plan/stresstest.yaml --listen 0.0.0.0:7070`; one retry per index.
pub fn worker_job(st: &StressTest, image: &str, workers: u32) -> Result<Job, BuildError> {
    let o = owner(st)?;
    let workers = workers.max(1);
    let count = i32::try_from(workers).unwrap_or(i32::MAX);
    let mut env = vec![EnvVar {
        name: "STAMPEDE_SHARDS".to_string(),
        value: Some(workers.to_string()),
        ..EnvVar::default()
    }];
    env.extend(target_env(&st.spec));
    let container = Container {
        name: "worker".to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["stampede".to_string()]),
        args: Some(
            [
                "worker".to_string(),
                "--plan".to_string(),
                PLAN_PATH.to_string(),
                "--listen".to_string(),
                format!("0.0.0.0:{WORKER_PORT}"),
            ]
            .to_vec(),
        ),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(WORKER_PORT_NAME.to_string()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        resources: st.spec.workers.resources.clone(),
        volume_mounts: Some(volume_mounts(&st.spec, false)),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    Ok(Job {
        metadata: o.metadata(worker_job_name(&o.name), Role::Worker),
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".to_string()),
            completions: Some(count),
            parallelism: Some(count),
            backoff_limit_per_index: Some(WORKER_BACKOFF_LIMIT_PER_INDEX),
            ttl_seconds_after_finished: ttl(&st.spec),
            template: pod_template(&o, Role::Worker, container, volumes(&st.spec, &o, false)),
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn ttl(spec: &StressTestSpec) -> Option<i32> {
    spec.cleanup
        .ttl_seconds_after_finished
        .map(|t| i32::try_from(t).unwrap_or(i32::MAX))
}

fn pod_template(
    o: &Owner,
    role: Role,
    container: Container,
    volumes: Vec<Volume>,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(child_labels(&o.name, role)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".to_string()),
            // Prepare and workers talk to Milvus only, never to the Kubernetes API.
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        localhost_profile: None,
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, no capabilities, the runtime's
/// default seccomp profile: what the `restricted` Pod Security Standard asks for.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// Env that reaches Milvus: credentials from `spec.target.credentialsSecret` (each key optional,
/// so a Secret may hold username/password or token) and the CA bundle path when
/// `spec.target.tls.caSecret` is set.
fn target_env(spec: &StressTestSpec) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some(secret) = &spec.target.credentials_secret {
        for (var, key) in [
            ("MILVUS_USERNAME", "username"),
            ("MILVUS_PASSWORD", "password"),
            ("MILVUS_TOKEN", "token"),
        ] {
            env.push(EnvVar {
                name: var.to_string(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: key.to_string(),
                        optional: Some(true),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    if spec.target.tls.ca_secret.is_some() {
        env.push(EnvVar {
            name: "MILVUS_CA_CERT".to_string(),
            value: Some(format!("{CA_DIR}/ca.crt")),
            ..EnvVar::default()
        });
    }
    env
}

fn volume_mounts(spec: &StressTestSpec, results: bool) -> Vec<VolumeMount> {
    let mut mounts = vec![VolumeMount {
        name: "plan".to_string(),
        mount_path: PLAN_DIR.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if results {
        mounts.push(VolumeMount {
            name: "results".to_string(),
            mount_path: RESULTS_DIR.to_string(),
            ..VolumeMount::default()
        });
    }
    if spec.target.tls.ca_secret.is_some() {
        mounts.push(VolumeMount {
            name: "ca".to_string(),
            mount_path: CA_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts
}

fn volumes(spec: &StressTestSpec, o: &Owner, results: bool) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: "plan".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: plan_configmap_name(&o.name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if results {
        volumes.push(Volume {
            name: "results".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    if let Some(secret) = &spec.target.tls.ca_secret {
        volumes.push(Volume {
            name: "ca".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".to_string(),
                    path: "ca.crt".to_string(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_manifest;

    const CLASSIC: &str = r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTest
metadata:
  name: milvus-capacity
  namespace: perf
  uid: 0b6c7f9e-4a52-4c1e-9d0a-3f1f2b9c8d7e
  generation: 3
spec:
  target: {address: "milvus.db.svc:19530", credentialsSecret: milvus-auth}
  collection: {name: stress_test_collection, dimension: 768, metric: L2}
  data:
    rows: 1000000
    batchSize: 10000
    seed: 42
    vectors: {distribution: Normal, normalize: true}
    scalars: [{name: category, values: [A, B, C, D]}]
  index: {type: HNSW, params: {M: 16, efConstruction: 200}}
  workload:
    model: Closed
    waitTime: {min: 100ms, max: 500ms}
    operations:
      - {name: search_vector, weight: 10, search: {topK: 10, params: {ef: 64}}}
      - {name: search_with_filter, weight: 3, search: {topK: 10, filter: 'category == "{category}"'}}
      - {name: batch_search, weight: 1, search: {topK: 10, nq: 5}}
  stages:
    - {duration: 60s, users: 10, spawnRate: 10}
    - {duration: 60s, users: 50, spawnRate: 10}
    - {duration: 60s, users: 100, spawnRate: 10}
    - {duration: 60s, users: 200, spawnRate: 20}
    - {duration: 60s, users: 500, spawnRate: 50}
  workers:
    maxUsersPerWorker: 250
    resources: {requests: {cpu: "2", memory: 1Gi}, limits: {memory: 2Gi}}
  sla: {minQps: 1000, maxP95: 100ms, maxErrorRatio: 0.001}
  capacity: {targetQps: 10000, redundancy: 2}
  cleanup: {ttlSecondsAfterFinished: 86400}
"#;

    const IMAGE: &str = "ghcr.io/stampede/stampede:0.1.0";

    fn classic() -> StressTest {
        parse_manifest(CLASSIC, "classic.yaml").unwrap()
    }

    fn expected_labels(role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "stampede".to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "stampede".to_string(),
            ),
            (
                "stampede.dev/test".to_string(),
                "milvus-capacity".to_string(),
            ),
            ("stampede.dev/role".to_string(), role.to_string()),
        ])
    }

    fn expected_owner() -> OwnerReference {
        OwnerReference {
            api_version: "stampede.dev/v1alpha1".to_string(),
            kind: "StressTest".to_string(),
            name: "milvus-capacity".to_string(),
            uid: "0b6c7f9e-4a52-4c1e-9d0a-3f1f2b9c8d7e".to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn secret_env(var: &str, key: &str) -> EnvVar {
        EnvVar {
            name: var.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "milvus-auth".to_string(),
                    key: key.to_string(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
        }
    }

    fn credentials() -> Vec<EnvVar> {
        vec![
            secret_env("MILVUS_USERNAME", "username"),
            secret_env("MILVUS_PASSWORD", "password"),
            secret_env("MILVUS_TOKEN", "token"),
        ]
    }

    fn pod_spec(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn the_plan_configmap_holds_the_manifest_and_is_owned_by_the_test() {
        let st = classic();
        let cm = plan_configmap(&st).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("milvus-capacity-plan"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("perf"));
        assert_eq!(cm.metadata.labels, Some(expected_labels("plan")));
        assert_eq!(cm.metadata.owner_references, Some(vec![expected_owner()]));
        assert_eq!(
            cm.metadata.annotations,
            Some(BTreeMap::from([(
                "stampede.dev/generation".to_string(),
                "3".to_string()
            )]))
        );
        let data = cm.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["stresstest.yaml"]);
        let parsed = parse_manifest(&data["stresstest.yaml"], "plan").unwrap();
        assert_eq!(parsed.spec, st.spec);
        assert_eq!(parsed.metadata.name.as_deref(), Some("milvus-capacity"));
        assert_eq!(parsed.metadata.namespace.as_deref(), Some("perf"));
        assert_eq!(parsed.metadata.uid, None);
    }

    #[test]
    fn the_plan_never_holds_credentials_only_the_secret_name() {
        let cm = plan_configmap(&classic()).unwrap();
        let yaml = &cm.data.unwrap()["stresstest.yaml"];
        assert!(yaml.contains("credentialsSecret: milvus-auth"), "{yaml}");
        assert!(!yaml.contains("password:"), "{yaml}");
        assert!(!yaml.contains("token:"), "{yaml}");
    }

    #[test]
    fn a_test_without_uid_cannot_own_children() {
        let mut st = classic();
        st.metadata.uid = None;
        let err = plan_configmap(&st).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the StressTest has no metadata.uid; children can only be built for an object read from the API server"
        );
        assert!(prepare_job(&st, IMAGE).is_err());
        assert!(worker_job(&st, IMAGE, 2).is_err());
    }

    #[test]
    fn the_prepare_job_runs_prepare_on_the_mounted_plan() {
        let st = classic();
        let job = prepare_job(&st, IMAGE).unwrap();
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("milvus-capacity-prepare")
        );
        assert_eq!(job.metadata.namespace.as_deref(), Some("perf"));
        assert_eq!(job.metadata.labels, Some(expected_labels("prepare")));
        assert_eq!(job.metadata.owner_references, Some(vec![expected_owner()]));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(2));
        assert_eq!(spec.ttl_seconds_after_finished, Some(86400));
        assert_eq!(spec.completion_mode, None);
        assert_eq!(
            spec.template.metadata.as_ref().unwrap().labels,
            Some(expected_labels("prepare"))
        );
        let pod = pod_spec(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.containers.len(), 1);
        let c = &pod.containers[0];
        assert_eq!(c.name, "prepare");
        assert_eq!(c.image.as_deref(), Some(IMAGE));
        assert_eq!(c.command, Some(vec!["stampede".to_string()]));
        assert_eq!(
            c.args,
            Some(
                ["prepare", "-f", "/plan/stresstest.yaml", "-o", "/results"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(c.env, Some(credentials()));
        assert_eq!(
            c.volume_mounts,
            Some(vec![
                VolumeMount {
                    name: "plan".to_string(),
                    mount_path: "/plan".to_string(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "results".to_string(),
                    mount_path: "/results".to_string(),
                    ..VolumeMount::default()
                },
            ])
        );
        assert_eq!(
            pod.volumes,
            Some(vec![
                Volume {
                    name: "plan".to_string(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "milvus-capacity-plan".to_string(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "results".to_string(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ])
        );
    }

    #[test]
    fn every_container_runs_restricted() {
        let st = classic();
        let expected = SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        };
        for job in [
            prepare_job(&st, IMAGE).unwrap(),
            worker_job(&st, IMAGE, 2).unwrap(),
        ] {
            let pod = pod_spec(&job);
            assert_eq!(pod.containers[0].security_context.as_ref(), Some(&expected));
            let psc = pod.security_context.as_ref().unwrap();
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_eq!(
                psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault")
            );
        }
    }

    #[test]
    fn the_worker_job_is_indexed_with_one_pod_per_worker() {
        let st = classic();
        let job = worker_job(&st, IMAGE, 2).unwrap();
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("milvus-capacity-workers")
        );
        assert_eq!(job.metadata.labels, Some(expected_labels("worker")));
        assert_eq!(job.metadata.owner_references, Some(vec![expected_owner()]));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(2));
        assert_eq!(spec.parallelism, Some(2));
        assert_eq!(spec.backoff_limit_per_index, Some(1));
        assert_eq!(spec.backoff_limit, None);
        assert_eq!(spec.ttl_seconds_after_finished, Some(86400));
        assert_eq!(
            spec.template.metadata.as_ref().unwrap().labels,
            Some(expected_labels("worker"))
        );
        let pod = pod_spec(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.name, "worker");
        assert_eq!(c.command, Some(vec!["stampede".to_string()]));
        assert_eq!(
            c.args,
            Some(
                [
                    "worker",
                    "--plan",
                    "/plan/stresstest.yaml",
                    "--listen",
                    "0.0.0.0:7070"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        let mut env = vec![EnvVar {
            name: "STAMPEDE_SHARDS".to_string(),
            value: Some("2".to_string()),
            value_from: None,
        }];
        env.extend(credentials());
        assert_eq!(c.env, Some(env));
        assert_eq!(
            c.ports,
            Some(vec![ContainerPort {
                name: Some("grpc".to_string()),
                container_port: 7070,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            }])
        );
        assert_eq!(c.resources, st.spec.workers.resources);
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "2");
        assert_eq!(
            c.volume_mounts.as_ref().map(|m| m
                .iter()
                .map(|m| (m.name.as_str(), m.mount_path.as_str()))
                .collect::<Vec<_>>()),
            Some(vec![("plan", "/plan")])
        );
        assert_eq!(
            pod.volumes.as_ref().map(|v| v.len()),
            Some(1),
            "workers need no results volume"
        );
    }

    #[test]
    fn a_test_without_credentials_gets_no_secret_env() {
        let mut st = classic();
        st.spec.target.credentials_secret = None;
        let job = prepare_job(&st, IMAGE).unwrap();
        assert_eq!(pod_spec(&job).containers[0].env, None);
        let job = worker_job(&st, IMAGE, 3).unwrap();
        assert_eq!(
            pod_spec(&job).containers[0].env,
            Some(vec![EnvVar {
                name: "STAMPEDE_SHARDS".to_string(),
                value: Some("3".to_string()),
                value_from: None,
            }])
        );
    }

    #[test]
    fn a_ca_secret_is_mounted_and_named_by_milvus_ca_cert() {
        let mut st = classic();
        st.spec.target.tls.enabled = true;
        st.spec.target.tls.ca_secret = Some("milvus-ca".to_string());
        let job = prepare_job(&st, IMAGE).unwrap();
        let pod = pod_spec(&job);
        let env = pod.containers[0].env.as_ref().unwrap();
        assert_eq!(
            env.last(),
            Some(&EnvVar {
                name: "MILVUS_CA_CERT".to_string(),
                value: Some("/etc/stampede/ca/ca.crt".to_string()),
                value_from: None,
            })
        );
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(
            mounts.last(),
            Some(&VolumeMount {
                name: "ca".to_string(),
                mount_path: "/etc/stampede/ca".to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            })
        );
        let volumes = pod.volumes.as_ref().unwrap();
        let secret = volumes.last().unwrap().secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("milvus-ca"));
        assert_eq!(
            secret.items,
            Some(vec![KeyToPath {
                key: "ca.crt".to_string(),
                path: "ca.crt".to_string(),
                ..KeyToPath::default()
            }])
        );
    }

    #[test]
    fn the_cleanup_job_drops_the_collection_of_the_plan_with_the_secret_from_env() {
        let st = classic();
        let job = cleanup_job(&st, IMAGE).unwrap();
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("milvus-capacity-cleanup")
        );
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()[LABEL_ROLE],
            "cleanup".to_string()
        );
        let pod = job.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["cleanup", "-f", "/plan/stresstest.yaml"]
        );
        assert_eq!(c.env, non_empty(target_env(&st.spec)));
    }

    #[test]
    fn placement_from_json_reaches_the_pod_template() {
        let p = Placement::from_json(
            r#"{"nodeSelector":{"pool":"load"},"tolerations":[{"key":"load","operator":"Exists","effect":"NoSchedule"}],"affinity":{"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname"}}]}}}"#,
        )
        .unwrap();
        let mut job = worker_job(&classic(), IMAGE, 2).unwrap();
        p.apply(&mut job);
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "load");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("load"));
        assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
    }

    #[test]
    fn an_empty_placement_changes_nothing_and_a_wrong_one_names_the_flag() {
        let mut job = worker_job(&classic(), IMAGE, 2).unwrap();
        let before = job.clone();
        Placement::from_json("").unwrap().apply(&mut job);
        assert_eq!(job, before);
        let err = Placement::from_json(r#"{"nodeSelecter":{}}"#).unwrap_err();
        assert!(
            err.contains("--worker-scheduling") && err.contains("nodeSelecter"),
            "{err}"
        );
    }

    #[test]
    fn jobs_without_a_ttl_are_kept() {
        let mut st = classic();
        st.spec.cleanup.ttl_seconds_after_finished = None;
        let job = prepare_job(&st, IMAGE).unwrap();
        assert_eq!(job.spec.unwrap().ttl_seconds_after_finished, None);
    }

    #[test]
    fn the_classic_scenario_needs_two_workers() {
        assert_eq!(worker_count(&classic().spec), 2);
    }

    #[test]
    fn worker_count_rounds_up_and_is_at_least_one() {
        let mut spec = classic().spec;
        spec.stages[4].users = Some(501);
        assert_eq!(worker_count(&spec), 3);
        spec.workers.max_users_per_worker = 1000;
        assert_eq!(worker_count(&spec), 1);
        spec.stages.clear();
        assert_eq!(worker_count(&spec), 1);
    }

    #[test]
    fn fixed_replicas_win_over_the_per_worker_limits() {
        let mut spec = classic().spec;
        spec.workers.replicas = Replicas::Fixed(7);
        assert_eq!(worker_count(&spec), 7);
        spec.workers.replicas = Replicas::Fixed(0);
        assert_eq!(worker_count(&spec), 1);
    }

    #[test]
    fn the_open_model_divides_the_peak_rate_by_the_rate_per_worker() {
        let mut spec = classic().spec;
        spec.workload.model = LoadModel::Open;
        for (stage, rate) in spec.stages.iter_mut().zip([1000.0, 5000.0, 12000.0]) {
            stage.users = None;
            stage.spawn_rate = None;
            stage.rate = Some(rate);
        }
        spec.stages.truncate(3);
        assert_eq!(worker_count(&spec), 3);
        spec.workers.max_rate_per_worker = 6000.0;
        assert_eq!(worker_count(&spec), 2);
        spec.workers.max_rate_per_worker = 0.1;
        spec.stages.truncate(1);
        spec.stages[0].rate = Some(0.7);
        assert_eq!(worker_count(&spec), 7);
    }

    #[test]
    fn short_names_are_kept_as_they_are() {
        assert_eq!(
            child_name("milvus-capacity", "plan"),
            "milvus-capacity-plan"
        );
        assert_eq!(test_label_value("milvus-capacity"), "milvus-capacity");
        assert_eq!(plan_configmap_name("a"), "a-plan");
        assert_eq!(prepare_job_name("a"), "a-prepare");
        assert_eq!(worker_job_name("a"), "a-workers");
    }

    #[test]
    fn long_names_are_cut_to_63_characters_with_a_hash_of_the_full_name() {
        let long = format!("{}-x", "capacity".repeat(8));
        let other = format!("{}-y", "capacity".repeat(8));
        let name = worker_job_name(&long);
        assert_eq!(name.len(), 63, "{name}");
        assert_eq!(
            name,
            format!(
                "capacitycapacitycapacitycapacitycapacitycapaci-{:08x}-workers",
                fnv1a(&long)
            )
        );
        assert!(is_dns_label(&name));
        assert_ne!(name, worker_job_name(&other));
        assert_eq!(name, worker_job_name(&long), "stable");
        let label = test_label_value(&long);
        assert_eq!(label.len(), 63, "{label}");
        assert_eq!(
            label,
            format!(
                "capacitycapacitycapacitycapacitycapacitycapacitycapaci-{:08x}",
                fnv1a(&long)
            )
        );
        assert_ne!(label, test_label_value(&other));
    }

    #[test]
    fn dotted_names_become_dns_labels() {
        let name = prepare_job_name("perf.team-a");
        assert_eq!(
            name,
            format!("perf-team-a-{:08x}-prepare", fnv1a("perf.team-a"))
        );
        assert!(is_dns_label(&name));
        assert_ne!(name, prepare_job_name("perf-team-a"));
        assert_eq!(test_label_value("perf.team-a"), "perf.team-a");
    }

    #[test]
    fn a_cut_never_ends_in_a_dash() {
        // 46 characters fit before the hash of a `-workers` child; the 46th here is a dash.
        let test = format!("{}-{}", "a".repeat(45), "b".repeat(30));
        let name = worker_job_name(&test);
        assert_eq!(
            name,
            format!("{}-{:08x}-workers", "a".repeat(45), fnv1a(&test))
        );
        assert!(is_dns_label(&name));
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn the_selector_finds_the_workers_of_one_test() {
        assert_eq!(
            child_selector("milvus-capacity", Role::Worker),
            "stampede.dev/test=milvus-capacity,stampede.dev/role=worker"
        );
    }
}
