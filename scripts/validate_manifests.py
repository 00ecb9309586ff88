#!/usr/bin/env python3
"""Offline validation of Kubernetes manifests (no API server): the chart's rendered output and the samples.

    validate_manifests.py [-k 1.35] [--crd CRD.yaml ...] [--skip-kind KIND ...] FILE|- ...

Run it with the Python of scripts/k8s-tools.sh's venv (kubernetes-validate, jsonschema, PyYAML):
${MIP_TOOLS_DIR:-/opt/mip-tools}/venv/bin/python scripts/validate_manifests.py ...

Every document of every FILE ("-" = stdin) is checked:

* built-in kinds against kubernetes-validate's bundled JSON schemas of that Kubernetes version, in strict mode
  (unknown fields are errors, like kubectl's strict field validation); every error is listed, not only the first;
* custom resources against the openAPIV3Schema of their CustomResourceDefinition (found among the inputs or given
  with --crd; CRDs given with --crd are not counted themselves), the way the API server reads it: `nullable`,
  `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields` (else unknown fields are errors),
  `x-kubernetes-list-type: set|map` (unique items / unique map keys), the formats ipv4, ipv6 and cidr, and every
  structural constraint (required fields, types, enums, bounds, lengths, patterns). CEL rules
  (`x-kubernetes-validations`) are NOT evaluated: they are counted and named in the OK line; defaulting and
  pruning are not emulated either;
* each CustomResourceDefinition for what the API server would refuse: a non-structural schema (a node without a
  type, type/default/nullable/additionalProperties/description inside allOf/anyOf/oneOf/not, properties together
  with additionalProperties, metadata constraints other than on name/generateName), metadata.name other than
  <plural>.<group>, not exactly one storage version;
* every object's metadata: a name that is a DNS subdomain (Services: a DNS label starting with a letter), label
  keys and values Kubernetes accepts, no namespace on a cluster-scoped custom resource;
* the YAML itself: duplicate mapping keys (kubectl refuses them; PyYAML would silently keep the last), and the
  same object (apiVersion group, kind, namespace, name) twice in one file.

Kinds given with --skip-kind (Kind or apiVersion/Kind; e.g. ServiceMonitor, whose CRD is not here) are reported
as SKIP. Prints one line per document and `N passed, N failed` last; exits 1 when anything failed.
"""
import argparse
import copy
import ipaddress
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from packaging.version import Version
from referencing import Registry, Resource


# === YAML ====================================================================================================

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_documents(path):
    """[(label, document)] of the non-empty documents in `path`; raises yaml.YAMLError."""
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    name = "<stdin>" if path == "-" else path
    return [(f"{name}#{i}", d) for i, d in enumerate(yaml.load_all(text, Loader=StrictLoader)) if d is not None]


# === metadata ================================================================================================

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def qualified_name_errors(key):
    prefix, _, name = key.rpartition("/")
    errors = []
    if "/" in key and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        errors.append(f"key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        errors.append(f"key {key!r}: name must be 1-63 alphanumerics, '-', '_' or '.'")
    return errors


def metadata_errors(doc, scope):
    """Errors in doc.metadata; scope: 'Namespaced', 'Cluster' or None (a built-in kind: not checked)."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: missing or not a mapping"]
    errors = []
    name = meta.get("name")
    if name is None:
        if not meta.get("generateName"):
            errors.append("metadata.name: required")
    elif not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name {name!r}: not a DNS subdomain (lowercase alphanumerics, '-', '.')")
    elif doc.get("kind") == "Service" and (len(name) > 63 or not DNS_1035_LABEL.match(name)):
        errors.append(f"metadata.name {name!r}: a Service name is a DNS label starting with a letter")
    if scope == "Cluster" and "namespace" in meta:
        errors.append("metadata.namespace: set on a cluster-scoped resource")
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict):
            errors.append(f"metadata.{field}: not a mapping")
            continue
        for key, value in values.items():
            errors += [f"metadata.{field}: {e}" for e in qualified_name_errors(str(key))]
            if not isinstance(value, str):
                errors.append(f"metadata.{field}[{key}]: value {value!r} is not a string")
            elif field == "labels" and (len(value) > 63 or not LABEL_VALUE.match(value)):
                errors.append(f"metadata.labels[{key}]: value {value!r} is not a valid label value")
    return errors


# === CRDs ====================================================================================================

JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
FORBIDDEN_IN_JUNCTORS = ("type", "default", "nullable", "additionalProperties", "description")


def structural_errors(schema, path="openAPIV3Schema", in_junctor=False):
    """What makes a schema non-structural (the API server's rules for apiextensions.k8s.io/v1)."""
    errors = []
    if not isinstance(schema, dict):
        return [f"{path}: not a mapping"]
    exempt = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if in_junctor:
        for key in FORBIDDEN_IN_JUNCTORS:
            if key in schema and not (key == "type" and exempt):
                errors.append(f"{path}: {key} must not be set inside allOf/anyOf/oneOf/not")
    elif not schema.get("type") and not exempt:
        errors.append(f"{path}: no type (a structural schema needs one on every node)")
    if "properties" in schema and isinstance(schema.get("additionalProperties"), dict):
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    for name, sub in (schema.get("properties") or {}).items():
        if name == "metadata" and path == "openAPIV3Schema" and isinstance(sub, dict):
            extra = set(sub.get("properties") or {}) - {"name", "generateName"}
            if extra or set(sub) - {"type", "properties", "description"}:
                errors.append(f"{path}.properties.metadata: only name and generateName may be constrained")
        errors += structural_errors(sub, f"{path}.properties.{name}", in_junctor)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            errors += structural_errors(schema[key], f"{path}.{key}", in_junctor)
    for key in JUNCTORS:
        subs = schema.get(key)
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs] if subs else []):
            errors += structural_errors(sub, f"{path}.{key}[{i}]", True)
    return errors


def crd_errors(crd):
    spec = crd.get("spec") or {}
    names, group = spec.get("names") or {}, spec.get("group")
    errors = []
    if crd.get("metadata", {}).get("name") != f"{names.get('plural')}.{group}":
        errors.append(f"metadata.name must be <plural>.<group> = {names.get('plural')}.{group}")
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage")) != 1:
        errors.append("spec.versions: exactly one version must have storage: true")
    for v in versions:
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(f"spec.versions[{v.get('name')}]: no schema.openAPIV3Schema")
        else:
            errors += [f"spec.versions[{v.get('name')}].schema.{e}" for e in structural_errors(schema)]
    return errors


def count_cel_rules(schema):
    if isinstance(schema, dict):
        return len(schema.get("x-kubernetes-validations") or []) + sum(count_cel_rules(v) for v in schema.values())
    if isinstance(schema, list):
        return sum(count_cel_rules(v) for v in schema)
    return 0


def to_jsonschema(schema):
    """An openAPIV3Schema as a Draft 4 JSON schema with the API server's reading of the x-kubernetes-* keys."""
    def walk(node):
        if not isinstance(node, dict):
            return node
        node = dict(node)
        for key in ("properties", "patternProperties"):
            if isinstance(node.get(key), dict):
                node[key] = {k: walk(v) for k, v in node[key].items()}
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                node[key] = walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                node[key] = [walk(v) for v in node[key]]
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = node.get("anyOf") or [{"type": "integer"}, {"type": "string"}]
        if (node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node):
            # Unknown fields: the API server prunes them, kubectl (strict field validation) refuses them.
            node["additionalProperties"] = False
        if node.get("x-kubernetes-list-type") == "set":
            node["uniqueItems"] = True
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        node.pop("x-kubernetes-validations", None)  # CEL: not evaluated here
        return node
    return walk(copy.deepcopy(schema))


def _list_map_keys(validator, keys, instance, schema):
    if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
        return
    seen = {}
    for i, item in enumerate(instance):
        if isinstance(item, dict):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"items {seen[key]} and {i} have the same map key {dict(zip(keys, key))}")
            seen.setdefault(key, i)


FORMATS = jsonschema.FormatChecker([])


@FORMATS.checks("ipv4", raises=ValueError)
def _ipv4(value):
    return not isinstance(value, str) or bool(ipaddress.IPv4Address(value))


@FORMATS.checks("ipv6", raises=ValueError)
def _ipv6(value):
    return not isinstance(value, str) or bool(ipaddress.IPv6Address(value))


@FORMATS.checks("cidr", raises=ValueError)
def _cidr(value):
    return not isinstance(value, str) or bool(ipaddress.ip_network(value, strict=False))


CrdValidator = jsonschema.validators.extend(jsonschema.Draft4Validator,
                                            {"x-kubernetes-list-map-keys": _list_map_keys})


# === built-in kinds ==========================================================================================

class BuiltinSchemas:
    """kubernetes-validate's strict schemas for one Kubernetes version, loaded once per kind."""

    def __init__(self, version):
        wanted = kv.major_minor(version.lstrip("v"))
        known = [v for v in kv.all_versions() if Version(kv.major_minor(v)) <= Version(wanted)]
        if not known:
            raise SystemExit(f"validate_manifests: kubernetes-validate has no schemas for {version}")
        self.version = known[-1]
        self.dir = f"kubernetes-json-schema/v{self.version}-local-strict"
        self.registry = Resource.from_contents(kv.schema_contents(f"{self.dir}/_definitions.json", version)) \
            @ Registry()
        self.validators = {}

    def validator(self, api_version, kind):
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        key = f"{kind.lower()}-{group_version}"
        if key not in self.validators:
            try:
                schema = kv.schema_contents(f"{self.dir}/{key}.json", self.version)
            except FileNotFoundError:
                self.validators[key] = None
            else:
                self.validators[key] = jsonschema.Draft202012Validator(
                    schema, registry=Resource.from_contents(schema) @ self.registry)
        return self.validators[key]


# === main ====================================================================================================

def error_lines(errors):
    def where(e):
        return "/".join(str(p) for p in e.absolute_path) or "(top)"
    return [f"{where(e)}: {e.message}" for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--kubernetes-version", default="1.35", help="schemas of this version (default 1.35)")
    ap.add_argument("--crd", action="append", default=[], metavar="FILE",
                    help="CRDs to validate custom resources against (not counted themselves)")
    ap.add_argument("--skip-kind", action="append", default=[], metavar="KIND",
                    help="report documents of this Kind (or apiVersion/Kind) as SKIP")
    ap.add_argument("files", nargs="+", metavar="FILE")
    args = ap.parse_args()

    passed = failed = skipped = 0

    def fail(label, what, lines):
        nonlocal failed
        failed += 1
        print(f"FAIL {label}: {what}")
        for line in lines:
            print(f"       {line}")

    inputs, crd_docs = [], []
    for path in args.files + args.crd:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError) as e:
            fail(path, "unreadable", str(e).splitlines())
            continue
        if path in args.crd:
            crd_docs += docs
        else:
            inputs.append(docs)

    crds = {}
    for _, d in crd_docs + [x for docs in inputs for x in docs]:
        if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition":
            spec = d.get("spec") or {}
            for v in spec.get("versions") or []:
                schema = (v.get("schema") or {}).get("openAPIV3Schema")
                if schema is not None:
                    key = (f"{spec.get('group')}/{v.get('name')}", (spec.get("names") or {}).get("kind"))
                    crds[key] = (CrdValidator(to_jsonschema(schema), format_checker=FORMATS),
                                 count_cel_rules(schema), spec.get("scope"))

    builtins = BuiltinSchemas(args.kubernetes_version)
    for docs in inputs:
        seen = {}
        for label, d in docs:
            if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or \
                    not isinstance(d.get("apiVersion"), str):
                fail(label, "?", ["not a Kubernetes object (no apiVersion and kind)"])
                continue
            api_version, kind = d["apiVersion"], d["kind"]
            meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
            what = f"{kind}/{meta.get('name')}"
            if kind in args.skip_kind or f"{api_version}/{kind}" in args.skip_kind:
                skipped += 1
                print(f"SKIP {label}: {what} (--skip-kind)")
                continue
            identity = (api_version.split("/")[0] if "/" in api_version else "", kind,
                        meta.get("namespace"), meta.get("name"))
            errors = []
            if meta.get("name") and identity in seen:
                errors.append(f"the same object as {seen[identity]}")
            seen.setdefault(identity, label)
            if (api_version, kind) in crds:
                validator, cel, scope = crds[(api_version, kind)]
                body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
                errors += metadata_errors(d, scope) + error_lines(validator.iter_errors(body))
                how = "CRD schema" + (f"; {cel} CEL rule(s) not evaluated" if cel else "")
            else:
                validator = builtins.validator(api_version, kind)
                if validator is None:
                    fail(label, what, [f"no schema for {api_version} {kind} in Kubernetes {builtins.version} "
                                       "and no CRD for it (--crd FILE, or --skip-kind)"])
                    continue
                errors += metadata_errors(d, None) + error_lines(validator.iter_errors(d))
                if kind == "CustomResourceDefinition" and api_version == "apiextensions.k8s.io/v1":
                    errors += crd_errors(d)
                how = f"Kubernetes {builtins.version} schema, strict"
            if errors:
                fail(label, what, errors)
            else:
                passed += 1
                print(f"OK   {label}: {what} ({how})")

    if skipped:
        print(f"{skipped} skipped (--skip-kind)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
