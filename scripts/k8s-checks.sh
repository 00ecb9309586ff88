#!/usr/bin/env bash
# The Kubernetes checks, offline (no cluster): the generated CRDs match operator/src/crd.rs, the chart lints
# (strict, values schema) and renders valid manifests with its default values and each variation, the samples
# are valid MipProxy/HomeAgent objects for those CRDs, broken inputs are refused (the checks can fail), and
# deploy/mip-proxy.yaml is the current rendering. Installs its tools first (scripts/k8s-tools.sh).
# Prints one line per check and `N passed, N failed` last; exits 1 when any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."

TOOLS="${MIP_TOOLS_DIR:-/opt/mip-tools}"
scripts/k8s-tools.sh --quiet || { echo "k8s-checks: tool installation failed" >&2; exit 1; }
HELM="$TOOLS/bin/helm"
PY="$TOOLS/venv/bin/python"
CHART=charts/mip-proxy
CRDS=(charts/mip-proxy/crds/*.yaml)
CRD_ARGS=()
for f in "${CRDS[@]}"; do CRD_ARGS+=(--crd "$f"); done
export HELM

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
log="$tmp/log"

# helm warns on stderr, on every run, that the chart's files/crds symlink (to the generated crds/) is followed.
helm() {
  local rc
  "$HELM" "$@" 2> "$tmp/helm.err"
  rc=$?
  grep -v 'found symbolic link in path' "$tmp/helm.err" >&2
  return $rc
}

# check NAME CMD...: runs CMD, output kept and shown only on failure.
check() {
  local name="$1"
  shift
  if "$@" > "$log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    sed 's/^/       /' "$log"
  fi
}

# refuses NAME EXPECT CMD...: CMD must fail, and its output must contain every |-separated string of EXPECT.
refuses() {
  local name="$1" expect="$2" missing=() s
  shift 2
  if "$@" > "$log" 2>&1; then
    failed=$((failed + 1))
    echo "FAIL $name: accepted (it must be refused)"
    sed 's/^/       /' "$log"
    return
  fi
  IFS='|' read -ra strings <<< "$expect"
  for s in "${strings[@]}"; do grep -qF -- "$s" "$log" || missing+=("$s"); done
  if [ ${#missing[@]} -eq 0 ]; then
    passed=$((passed + 1))
    echo "ok   $name (refused)"
  else
    failed=$((failed + 1))
    echo "FAIL $name: refused, but without: ${missing[*]}"
    sed 's/^/       /' "$log"
  fi
}

validate() { "$PY" scripts/validate_manifests.py "$@"; }

# render NAME [helm template args]: the chart rendered into $tmp/NAME.yaml (release mip-proxy, ns mip-system).
render() {
  local name="$1"
  shift
  helm template mip-proxy "$CHART" --namespace mip-system --include-crds "$@" > "$tmp/$name.yaml"
}

# expect_kinds FILE KIND=COUNT...: the rendered FILE holds exactly COUNT objects of each KIND.
expect_kinds() {
  local file="$1"
  shift
  "$PY" - "$file" "$@" <<'EOF'
import collections, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = collections.Counter(d["kind"] for d in docs)
bad = [f"{k}: {kinds[k]} (expected {n})" for k, n in (a.split("=") for a in sys.argv[2:]) if kinds[k] != int(n)]
print("\n".join(bad) or f"kinds ok: {dict(kinds)}")
sys.exit(1 if bad else 0)
EOF
}

# grep_in FILE PATTERN...: every fixed-string PATTERN occurs in FILE.
grep_in() {
  local file="$1" p rc=0
  shift
  for p in "$@"; do grep -qF -- "$p" "$file" || { echo "missing: $p"; rc=1; }; done
  return $rc
}

echo "k8s-checks: $("$HELM" version --short), $("$PY" -c 'import kubernetes_validate as k; print("kubernetes-validate", k.__version__)')"

# --- the CRDs are generated from operator/src/crd.rs --------------------------------------------------------
check "crdgen --check $CHART/crds" cargo run --quiet --locked -p mip-operator --bin crdgen -- --check "$CHART/crds"

# --- the chart's appVersion (the images' default tag) is the workspace version ------------------------------
app_version() {
  local cargo chart
  cargo="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
  chart="$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")"
  echo "Cargo.toml workspace version: $cargo, Chart.yaml appVersion: $chart"
  [ -n "$cargo" ] && [ "$cargo" = "$chart" ]
}
check "Chart.yaml appVersion = workspace version" app_version

# --- helm lint (strict: warnings are errors; values.schema.json) ---------------------------------------------
check "helm lint --strict (default values)" helm lint --strict "$CHART"
check "helm lint --strict (ServiceMonitor, tracing)" \
  helm lint --strict "$CHART" --set prometheus.serviceMonitor.enabled=true,tracing.endpoint=http://otel:4317
check "helm lint --strict (no CRDs, no RBAC, existing ServiceAccount, text logs)" \
  helm lint --strict "$CHART" --set crds.enabled=false,rbac.create=false,serviceAccount.create=false \
  --set serviceAccount.name=mip-operator,logging.format=text

# --- helm template | validate_manifests.py --------------------------------------------------------------------
check "render: default values" render default
check "validate: default values" validate "$tmp/default.yaml"
check "default values: 2 CRDs (kept on uninstall), operator objects" expect_kinds "$tmp/default.yaml" \
  CustomResourceDefinition=2 Deployment=1 ServiceAccount=1 ClusterRole=1 ClusterRoleBinding=1 Role=1 \
  RoleBinding=1 Service=1 ServiceMonitor=0
check "default values: operator args, env, probes, CRD policy" grep_in "$tmp/default.yaml" \
  'image: "example.invalid/mip-proxy/mip-operator:0.1.0"' '- "example.invalid/mip-proxy/mip-proxy:0.1.0"' \
  '- --lease-name' '- mip-operator-leader' '- --metrics-addr' 'value: "info,kube=warn"' 'fieldPath: metadata.namespace' \
  'path: /healthz' 'path: /readyz' 'helm.sh/resource-policy: keep' 'readOnlyRootFilesystem: true' 'replicas: 2'

# templates/crds.yaml re-serialises the generated CRDs (fromYaml | toYaml, adding labels and the keep policy):
# apart from those, what it renders must equal the generated files (no value lost or rounded on the way).
same_crds() {
  "$PY" - "$tmp/default.yaml" "${CRDS[@]}" <<'EOF'
import sys, yaml
rendered = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[1]))
            if d and d["kind"] == "CustomResourceDefinition"}
bad = 0
for path in sys.argv[2:]:
    crd = yaml.safe_load(open(path))
    got = rendered.pop(crd["metadata"]["name"], None)
    if got is not None:
        got["metadata"].pop("labels", None)
        if got["metadata"].pop("annotations", None) != {"helm.sh/resource-policy": "keep"}:
            got = None
    ok = got == crd
    bad += not ok
    print(("same " if ok else "DIFFERENT ") + path)
bad += len(rendered)
print("rendered but not generated:", sorted(rendered)) if rendered else None
sys.exit(1 if bad else 0)
EOF
}
check "default values: rendered CRDs = the generated crds/*.yaml (+ labels, keep)" same_crds

check "render: ServiceMonitor, tracing, images, scheduling" render monitoring \
  --set prometheus.serviceMonitor.enabled=true,tracing.endpoint=http://otel:4317 \
  --set prometheus.serviceMonitor.labels.release=kube-prometheus-stack \
  --set image.tag=1.2.3,proxyImage.repository=registry.example.invalid/mip-proxy,proxyImage.tag=1.2.3 \
  --set replicaCount=3,logging.format=text,nodeSelector.role=infra \
  --set-json 'imagePullSecrets=[{"name":"regcred"}]' \
  --set-json 'tolerations=[{"key":"infra","operator":"Exists","effect":"NoSchedule"}]' \
  --set-json 'affinity={"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/component":"operator"}}}}]}}'
# ServiceMonitor: prometheus-operator's CRD is not here (its fields are covered by values.schema.json).
check "validate: ServiceMonitor, tracing, images, scheduling" \
  validate --skip-kind monitoring.coreos.com/v1/ServiceMonitor "$tmp/monitoring.yaml"
monitoring_settings() {
  expect_kinds "$tmp/monitoring.yaml" ServiceMonitor=1 Deployment=1 &&
    grep_in "$tmp/monitoring.yaml" '- --default-otlp-endpoint' '- "http://otel:4317"' \
      'port: http-metrics' 'release: kube-prometheus-stack' '- "registry.example.invalid/mip-proxy:1.2.3"' \
      'mip-operator:1.2.3"' '- text' 'replicas: 3' 'name: regcred' 'role: infra' 'podAntiAffinity:'
}
check "ServiceMonitor variation: objects and settings" monitoring_settings

check "render: no CRDs, no RBAC, existing ServiceAccount" render minimal \
  --set crds.enabled=false,rbac.create=false,serviceAccount.create=false,serviceAccount.name=mip-operator
check "validate: no CRDs, no RBAC, existing ServiceAccount" validate "$tmp/minimal.yaml"
check "minimal variation: only the Deployment and Service" expect_kinds "$tmp/minimal.yaml" \
  CustomResourceDefinition=0 ClusterRole=0 Role=0 ServiceAccount=0 Deployment=1 Service=1

other_release() {
  helm template edge "$CHART" --namespace ops --set fullnameOverride=mipx > "$tmp/other.yaml" &&
    validate "$tmp/other.yaml" && grep_in "$tmp/other.yaml" 'name: mipx-operator' 'namespace: ops'
}
check "render and validate: other release name, namespace, fullnameOverride" other_release

# The packaged chart carries the CRDs once, as templates (files/crds/), and no crds/ that Helm would install by
# itself on `helm install` next to the templated copies (.helmignore).
packaged_crds() {
  helm package "$CHART" -d "$tmp/pkg" > /dev/null &&
    "$PY" - "$tmp"/pkg/mip-proxy-*.tgz <<'EOF'
import sys, tarfile
names = tarfile.open(sys.argv[1]).getnames()
crds = sorted(n for n in names if n.startswith("mip-proxy/files/crds/"))
native = [n for n in names if n.startswith("mip-proxy/crds/")]
print("files/crds:", crds, "crds/:", native)
sys.exit(0 if len(crds) == 2 and not native else 1)
EOF
}
check "helm package: CRDs only as templates (no crds/ for Helm to install too)" packaged_crds

# --- samples against the generated CRDs ---------------------------------------------------------------------
check "validate: deploy/samples/*.yaml against the CRDs" validate "${CRD_ARGS[@]}" deploy/samples/*.yaml
check "validate: deploy/mip-proxy.yaml" validate deploy/mip-proxy.yaml

# --- negative checks: broken inputs must be refused ---------------------------------------------------------
"$PY" - deploy/samples/mipproxy.yaml "$tmp/broken-sample.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
spec = docs[0]["spec"]
del spec["publicAddress"]                       # a required field
spec["privateAddress"] = "10.10.0.300"          # not an IPv4 address
spec["replica"] = 3                             # a typo'd field
spec["mode"] = "threeBox"                       # not in the enum
spec["replication"]["port"] = 70000             # above u16
spec["replicas"] = "3"                          # a string, not an integer
spec["telemetry"]["otlpEndpoint"] = "https://otel:4317"  # TLS: the exporter has none
spec["telemetry"]["samplingPercent"] = 150      # above 100
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
EOF
refuses "validate: broken MipProxy sample" \
  "'publicAddress' is a required property|is not a 'ipv4'|'replica' was unexpected|'threeBox' is not one of|70000 is greater than the maximum|'3' is not of type|'https://otel:4317' does not match|150 is greater than the maximum|0 passed, 1 failed" \
  validate "${CRD_ARGS[@]}" "$tmp/broken-sample.yaml"
printf 'apiVersion: mipproxy.io/v1alpha1\nkind: HomeAgent\nmetadata: {name: Ha_1}\nspec:\n  address: 10.10.1.1\n  address: 10.10.1.2\n' \
  > "$tmp/duplicate-key.yaml"
refuses "validate: duplicate YAML key" "duplicate key 'address'" validate "${CRD_ARGS[@]}" "$tmp/duplicate-key.yaml"
printf 'apiVersion: mipproxy.io/v1alpha1\nkind: HomeAgent\nmetadata: {name: Ha_1}\nspec:\n  address: 10.10.1.1\n  homePrefixes: [10.10.1.0/24]\n  securityAssociations: {key: keys.yaml}\n' \
  > "$tmp/broken-homeagent.yaml"
refuses "validate: broken HomeAgent sample" "'Ha_1': not a DNS subdomain|'name' is a required property" \
  validate "${CRD_ARGS[@]}" "$tmp/broken-homeagent.yaml"
refuses "validate: a custom resource without its CRD" "no CRD for it" validate deploy/samples/homeagent.yaml
bad_security_context() {
  helm template mip-proxy "$CHART" --set-json 'securityContext={"runAsNonRoot":"yes"}' | validate -
}
refuses "validate: chart rendered with an invalid container securityContext" "runAsNonRoot: 'yes' is not of type" \
  bad_security_context
printf 'replicaCount: two\n' > "$tmp/bad-replicas.yaml"
refuses "helm lint: replicaCount: two" "at '/replicaCount': got string, want integer" helm lint --strict "$CHART" -f "$tmp/bad-replicas.yaml"
printf 'logging:\n  filter: info\n  format: yaml\n' > "$tmp/bad-format.yaml"
refuses "helm lint: logging.format: yaml" "at '/logging/format': value must be one of 'json', 'text'" \
  helm lint --strict "$CHART" -f "$tmp/bad-format.yaml"
printf 'replicas: 3\n' > "$tmp/bad-key.yaml"
refuses "helm lint: unknown key replicas" "additional properties 'replicas' not allowed" \
  helm lint --strict "$CHART" -f "$tmp/bad-key.yaml"
printf 'tracing:\n  endpoint: otel:4317\n' > "$tmp/bad-endpoint.yaml"
refuses "helm template: tracing.endpoint without a scheme" "at '/tracing/endpoint': 'otel:4317' does not match pattern" \
  helm template mip-proxy "$CHART" -f "$tmp/bad-endpoint.yaml"
printf 'tracing:\n  endpoint: https://otel:4317\n' > "$tmp/tls-endpoint.yaml"
refuses "helm template: tracing.endpoint https:// (the exporter has no TLS)" \
  "at '/tracing/endpoint': 'https://otel:4317' does not match pattern" \
  helm template mip-proxy "$CHART" -f "$tmp/tls-endpoint.yaml"

# --- deploy/mip-proxy.yaml is the current rendering ---------------------------------------------------------
check "render-manifests.sh --check" scripts/render-manifests.sh --check

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
