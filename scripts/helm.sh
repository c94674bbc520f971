#!/usr/bin/env bash
# The real Helm engine without a helm binary: Helm v4's Go SDK from the PyPI package
# helm-python-sdk (libhelm_c, loaded with ctypes), installed into .venv on first use, behind a
# small command line with the subset of helm's own flags that this project uses:
#
#   scripts/helm.sh version
#   scripts/helm.sh lint CHART [--strict] [-f VALUES]... [--set K=V]... [--namespace NS]
#   scripts/helm.sh template [NAME] CHART [-n NS] [-f VALUES]... [--set K=V]...
#                    [--set-string K=V]... [--set-json K=JSON]... [--include-crds]
#
# `template` prints what `helm template` prints: every rendered manifest as its own YAML
# document headed by `# Source: CHART/templates/FILE`, NOTES.txt and partials left out.
# `lint` prints helm's findings and exits 1 when there is an error (or, with --strict, a
# warning).
#
# Environment: STAMPEDE_VENV (default .venv).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${STAMPEDE_VENV:-$root/.venv}
sdk_version=0.2.2

log() { printf 'helm.sh: %s\n' "$*" >&2; }

installed() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$sdk_version" <<'PY' 2>/dev/null
import sys
import helm_python
sys.exit(0 if helm_python.__version__ == sys.argv[1] else 1)
PY
}

install() {
  installed && return 0
  # Tests call this script in parallel: one installs, the others wait for it.
  exec 9>"${TMPDIR:-/tmp}/stampede-helm-install.lock"
  flock 9
  if ! installed; then
    if [ ! -x "$venv/bin/python" ]; then
      if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        log "python3 venv support is missing; installing python3-venv with apt-get"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      fi
      python3 -m venv "$venv"
    fi
    log "installing helm-python-sdk==$sdk_version (Helm v4 SDK) into $venv (first time only)"
    "$venv/bin/pip" install -q --disable-pip-version-check "helm-python-sdk==$sdk_version" >&2
  fi
  flock -u 9
  exec 9>&-
}

install

program=$(cat <<'PY'
import re
import sys

import helm_python as helm

USAGE = """usage: scripts/helm.sh version
       scripts/helm.sh lint CHART [--strict] [-f VALUES]... [--set K=V]... [--namespace NS]
       scripts/helm.sh template [NAME] CHART [-n NS] [-f VALUES]... [--set K=V]...
                       [--set-string K=V]... [--set-json K=JSON]... [--include-crds]"""


def fail(message, code=1):
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)


def merge(base, override):
    """Helm merges value sources in order, maps deeply, anything else replaced."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def parse(args):
    opts = {"positional": [], "values": {}, "namespace": None, "strict": False,
            "include_crds": False}
    parsers = {"--set": helm.parse_set_string, "--set-string": helm.parse_set_string_values,
               "--set-json": helm.parse_set_json}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if not arg.startswith("--"):
            name, eq, inline = arg, "", ""

        def value():
            nonlocal i
            if eq:
                return inline
            i += 1
            if i >= len(args):
                fail(f"flag needs an argument: {name}")
            return args[i]

        if name in parsers:
            merge(opts["values"], parsers[name](value()))
        elif name in ("-f", "--values"):
            path = value()
            try:
                with open(path, encoding="utf-8") as f:
                    merge(opts["values"], helm.values_from_yaml(f.read()))
            except OSError as e:
                fail(f"open {path}: {e.strerror}")
        elif name in ("-n", "--namespace"):
            opts["namespace"] = value()
        elif name == "--strict":
            opts["strict"] = True
        elif name == "--include-crds":
            opts["include_crds"] = True
        elif name.startswith("-"):
            fail(f"unknown flag: {name}\n{USAGE}")
        else:
            opts["positional"].append(arg)
        i += 1
    return opts


def lint(opts):
    if len(opts["positional"]) != 1:
        fail(f"lint needs one chart path\n{USAGE}")
    path = opts["positional"][0]
    report = helm.lint(path, opts["values"], strict=opts["strict"],
                       namespace=opts["namespace"])
    print(f"==> Linting {path}")
    names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    worst = 0
    for m in report.get("messages") or []:
        severity = m.get("severity", 0)
        worst = max(worst, severity)
        print(f"[{names.get(severity, severity)}] {m.get('path', '')}: {m.get('error', '')}")
    # "errors" repeats the error messages; print it only when the messages say nothing.
    for e in report.get("errors") or []:
        if worst < 3:
            print(f"[ERROR] {e}")
        worst = 3
    failed = worst >= 3 or (opts["strict"] and worst >= 2)
    print(f"\n{report.get('total_charts_linted', 1)} chart(s) linted, {int(failed)} chart(s) failed")
    sys.exit(1 if failed else 0)


# Helm's install order (pkg/release/util/kind_sorter.go): `helm template` prints in this order.
INSTALL_ORDER = """Namespace NetworkPolicy ResourceQuota LimitRange PodSecurityPolicy
PodDisruptionBudget ServiceAccount Secret SecretList ConfigMap StorageClass PersistentVolume
PersistentVolumeClaim CustomResourceDefinition ClusterRole ClusterRoleList ClusterRoleBinding
ClusterRoleBindingList Role RoleList RoleBinding RoleBindingList Service DaemonSet Pod
ReplicationController ReplicaSet Deployment HorizontalPodAutoscaler StatefulSet Job CronJob
IngressClass Ingress APIService MutatingWebhookConfiguration
ValidatingWebhookConfiguration""".split()


def install_rank(body):
    kind = re.search(r"^kind:\s*(\S+)", body, re.MULTILINE)
    name = kind.group(1) if kind else ""
    return INSTALL_ORDER.index(name) if name in INSTALL_ORDER else len(INSTALL_ORDER)


def template(opts):
    positional = opts["positional"]
    if len(positional) == 1:
        name, path = "release-name", positional[0]
    elif len(positional) == 2:
        name, path = positional
    else:
        fail(f"template needs [NAME] CHART\n{USAGE}")
    helm.validate_release_name(name)
    namespace = opts["namespace"] or "default"
    crds, out = [], []
    with helm.Chart.load(path) as chart:
        chart.validate_schema(chart.merge_values(opts["values"]))
        if opts["include_crds"]:
            for crd in sorted(chart.crds, key=lambda c: c["filename"]):
                crds.append(f"---\n# Source: {crd['filename']}\n{crd['data'].strip()}\n")
        rendered = chart.render(opts["values"], name=name, namespace=namespace,
                                is_install=True)
        for source in sorted(rendered):
            base = source.rsplit("/", 1)[-1]
            if base.startswith("_") or base == "NOTES.txt":
                continue
            for document in rendered[source].split("\n---"):
                body = document.strip()
                if body.startswith("---"):
                    body = body[3:].strip()
                if not body or all(line.strip().startswith("#") or not line.strip()
                                   for line in body.splitlines()):
                    continue
                out.append((install_rank(body), f"---\n# Source: {source}\n{body}\n"))
    out.sort(key=lambda ranked: ranked[0])
    sys.stdout.write("".join(crds + [text for _, text in out]))


def main(args):
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    try:
        if command == "version":
            print(f'version.BuildInfo{{Version:"{helm.helm_sdk_version()}", HelmCSDK:"{helm.helm_c_version()}", HelmPythonSDK:"{helm.__version__}"}}')
        elif command == "lint":
            lint(parse(rest))
        elif command == "template":
            template(parse(rest))
        else:
            fail(f"unknown command {command!r} (this wrapper knows version, lint, template)\n{USAGE}")
    except helm.HelmError as e:
        fail(str(e))


main(sys.argv[1:])
PY
)
exec "$venv/bin/python" -c "$program" "$@"
