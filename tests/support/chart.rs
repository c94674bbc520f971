//! The Helm chart as tests see it: rendered by the real Helm engine (`scripts/helm.sh`, Helm v4's
//! Go SDK from PyPI), split into objects, parsed strictly into k8s-openapi types, and the RBAC
//! rules it grants the controller.
//!
//! ```ignore
//! mod support;
//! use support::chart::{cluster_rules, helm_template};
//!
//! let yaml = helm_template(&[("watchNamespaces[0]", "tests")]);
//! let rules = cluster_rules(&yaml); // every rule the controller's ServiceAccount is granted
//! ```

use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Release name `helm_template` renders with (the chart then names its objects `stampede`).
pub const RELEASE: &str = "stampede";
/// Namespace `helm_template` renders into.
pub const NAMESPACE: &str = "stampede-system";

/// The crate root.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart directory, `charts/stampede`.
pub fn chart_dir() -> PathBuf {
    crate_dir().join("charts/stampede")
}

/// Runs `scripts/helm.sh ARGS` from the crate root (installs Helm into .venv on first use).
pub fn helm(args: &[&str]) -> Output {
    Command::new(crate_dir().join("scripts/helm.sh"))
        .args(args)
        .current_dir(crate_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/helm.sh {args:?}: {e}"))
}

/// `helm template stampede charts/stampede --namespace stampede-system` with the extra
/// arguments (`--set`, `--set-json`, `-f`, …); helm's stderr on failure.
pub fn helm_template_args(extra: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "template",
        RELEASE,
        "charts/stampede",
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm template printed UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The chart rendered with `--set KEY=VALUE` for each pair (release `stampede`, namespace
/// `stampede-system`); panics with helm's stderr when rendering fails.
pub fn helm_template(values: &[(&str, &str)]) -> String {
    let sets: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut extra = Vec::new();
    for set in &sets {
        extra.extend(["--set", set.as_str()]);
    }
    helm_template_args(&extra)
        .unwrap_or_else(|stderr| panic!("helm template {values:?} failed:\n{stderr}"))
}

/// Every non-empty document of a rendered stream, as JSON.
pub fn rendered_objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("the rendered chart is not YAML: {e}"));
            serde_json::to_value(value).expect("a YAML document converts to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of one kind.
pub fn objects_of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of a kind; panics when there is none or more than one.
pub fn only_object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = objects_of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// Parses `value` into `T` the way the API server would: a field `T` does not know (a typo, a
/// wrong indentation) or a wrong type fails, and so does anything lost on a round trip.
pub fn parse_strict<T: DeserializeOwned + serde::Serialize>(value: &Value) -> T {
    let mut unknown = Vec::new();
    let typed: T = serde_ignored::deserialize(value.clone(), |path| {
        // serde_ignored marks each Option it passes with `?`: leave those out.
        unknown.push(path.to_string().replace(".?", ""));
    })
    .unwrap_or_else(|e| {
        panic!(
            "{} {}: not a valid {}: {e}",
            value["kind"],
            value["metadata"]["name"],
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        unknown,
        Vec::<String>::new(),
        "{} {}: unknown fields",
        value["kind"],
        value["metadata"]["name"]
    );
    let again = serde_json::to_value(&typed).expect("a k8s-openapi object serializes");
    assert_eq!(
        &again,
        value,
        "{} {}: changed on a round trip through {}",
        value["kind"],
        value["metadata"]["name"],
        std::any::type_name::<T>()
    );
    typed
}

/// One rule granted to the controller, with the namespace it holds in (None: cluster-wide).
#[derive(Clone, Debug)]
pub struct GrantedRule {
    /// Namespace of the Role, or None for a ClusterRole.
    pub namespace: Option<String>,
    /// The rule.
    pub rule: PolicyRule,
}

/// Every rule the rendered chart grants, from its ClusterRoles (cluster-wide) and Roles (in
/// their namespace). The chart binds each of them to the controller's ServiceAccount only.
pub fn granted_rules(yaml: &str) -> Vec<GrantedRule> {
    let mut granted = Vec::new();
    for object in rendered_objects(yaml) {
        match object["kind"].as_str() {
            Some("ClusterRole") => {
                let role: ClusterRole = parse_strict(&object);
                granted.extend(role.rules.unwrap_or_default().into_iter().map(|rule| {
                    GrantedRule {
                        namespace: None,
                        rule,
                    }
                }));
            }
            Some("Role") => {
                let role: Role = parse_strict(&object);
                let namespace = role.metadata.namespace.clone();
                granted.extend(role.rules.unwrap_or_default().into_iter().map(|rule| {
                    GrantedRule {
                        namespace: namespace.clone(),
                        rule,
                    }
                }));
            }
            _ => {}
        }
    }
    granted
}

/// The rules of every ClusterRole and Role of the rendered chart, namespaces left out: what the
/// controller may do at all. With default values the controller's own rules are in one
/// ClusterRole and its Lease rule in a Role of the release namespace (see `granted_rules` for
/// where each holds).
pub fn cluster_rules(yaml: &str) -> Vec<PolicyRule> {
    granted_rules(yaml).into_iter().map(|g| g.rule).collect()
}

/// Whether `rules` allow `verb` on `resource` (`jobs`, `stresstests/status`, …) of API group
/// `group` ("" for the core group), wildcards included.
pub fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        let any = |list: &Option<Vec<String>>, want: &str| {
            list.as_ref()
                .is_some_and(|l| l.iter().any(|x| x == want || x == "*"))
        };
        any(&r.api_groups, group)
            && r.resources
                .iter()
                .flatten()
                .any(|x| x == resource || x == "*")
            && r.verbs.iter().any(|x| x == verb || x == "*")
    })
}
