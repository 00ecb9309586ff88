#!/usr/bin/env python3
"""A kmock KubernetesEmulator for operator/tests/kmock.rs: an in-memory HTTP stand-in for kube-apiserver.

    emulator.py [--port N] [--crd FILE ...]

Serves discovery, list, watch, get, create, patch and delete over loopback HTTP (no TLS, no authentication) for
the built-in kinds the operator and kubectl touch (RESOURCES below) plus every CustomResourceDefinition found in
the --crd files (multi-document YAML, e.g. crdgen's output). Prints `kmock emulator listening on http://HOST:PORT`
on stdout once it serves, then runs until SIGTERM/SIGINT.

It is NOT a Kubernetes API server: there is no validation, no admission (CEL), no defaulting, no garbage
collection, no controllers (a Deployment never gets pods or status), no authentication and no RBAC. kmock 0.8's own
emulator stores objects as plain dicts; this subclass closes the gaps the operator depends on, each marked
`WORKAROUND` below:

1. kmock assigns no `uid`, `resourceVersion`, `generation` or `creationTimestamp`: create assigns all four
   (owner references need the owner's uid; `observedGeneration` needs a generation).
2. kmock's PATCH is a naive dict merge for every content type and always emits a MODIFIED watch event.
   Here: `application/merge-patch+json` is RFC 7386; `application/json-patch+json` is RFC 6902 (the finalizer
   helper's test-and-remove; a failed `test` is 422 like the API server's); `application/apply-patch+yaml`
   (server-side apply) creates a missing object (upsert) and otherwise merges like RFC 7386 (there is no field
   ownership: a field dropped from an applied configuration is NOT removed, and conflicts are never reported).
   A patch carrying `metadata.resourceVersion` is refused with 409 Conflict when it is stale (the optimistic
   concurrency the leader election relies on). A patch that changes nothing gets no new resourceVersion and no
   watch event, as on a real server; without this, every server-side apply would wake the operator's owner
   watches and reconcile forever.
3. `/status` patches change only `status`; patches of the main resource leave `status` alone when the resource has
   a status subresource. `generation` is bumped when `spec` changes.
4. kmock lists have no `kind`/`apiVersion` (kubectl cannot print them) and ignore `labelSelector`: lists get
   `kind: <Kind>List` and equality/existence label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`) are applied.
   Watches still ignore label and field selectors (the operator's watches use none).
5. PUT (replace) is not routed by kmock at all (404); the operator updates with PATCH only.
6. kmock's `/api/v1` discovery says `groupVersion: /v1`; kubectl then finds no core kinds: answered as `v1`.
7. A Secret's `stringData` is moved into `data` (base64), as the API server does.
8. kmock's 404 answers carry reasons like `Object Not Found`; the API server's (and what clients test) is
   `NotFound`.

Creates and patches are stored here (kmock's handlers cannot express the above); reads, watches and deletes are
kmock's (a DELETE of an object with finalizers only sets deletionTimestamp; removing the last finalizer deletes it).

Left out: Namespace objects (kmock's path parser cannot take `/api/v1/namespaces` itself; objects may be created
in any namespace without one). kubectl's typed commands (`kubectl create secret generic ...`) send protobuf, which
kmock cannot read: create everything from YAML/JSON files (`kubectl create -f`).
"""

import argparse
import asyncio
import base64
import copy
import datetime
import signal
import sys
import uuid

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import yaml
from kmock import (KubernetesEmulator, KubernetesError, KubernetesNotFoundError, KubernetesObjectNotFoundError,
                   ResourceInfo, Server, action, resource)

# (group, version, plural, kind, namespaced, subresources): what the operator and the test's kubectl touch.
RESOURCES = [
    ("", "v1", "secrets", "Secret", True, ()),
    ("", "v1", "configmaps", "ConfigMap", True, ()),
    ("", "v1", "services", "Service", True, ("status",)),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, ()),
    ("", "v1", "pods", "Pod", True, ("status",)),
    ("", "v1", "events", "Event", True, ()),
    ("apps", "v1", "deployments", "Deployment", True, ("status",)),
    ("apps", "v1", "daemonsets", "DaemonSet", True, ("status",)),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("status",)),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, ()),
    ("events.k8s.io", "v1", "events", "Event", True, ()),
]

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def string_data_to_data(obj):
    """WORKAROUND 7: a Secret's `stringData` is write-only: merged into `data` (base64) as the API server does."""
    if obj.get("kind") == "Secret" and isinstance(obj.get("stringData"), dict):
        data = obj.setdefault("data", {}) or {}
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


def without_version(obj):
    obj = copy.deepcopy(obj)
    meta = obj.get("metadata", {})
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return obj


def selector_matches(selector: str, labels: dict) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(KubernetesEmulator):
    _mutex: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _version: int = attrs.field(default=0, init=False)

    def next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def register(self, group, version, plural, kind, namespaced, subresources):
        # No short names: kmock would list them for the subresources too and kubectl would warn of ambiguity.
        self.resources[resource(group, version, plural)] = ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS, subresources=set(subresources))

    def info(self, res):
        for known in self.resources:
            if known == res:
                return self.resources[known]
        return None

    async def _handle(self, request):
        if request.resource is None or request.action not in (action.CREATE, action.UPDATE):
            return await super()._handle(request)
        async with self._mutex:
            if request.action == action.CREATE:
                return await self._create(request, request.data)
            return await self._patch(request)

    async def _create(self, request, obj):
        # WORKAROUND 1: identity and versioning fields.
        obj = copy.deepcopy(obj) if isinstance(obj, dict) else {}
        meta = obj.setdefault("metadata", {})
        if request.namespace:
            meta.setdefault("namespace", request.namespace)
        if request.name:
            meta.setdefault("name", request.name)
        if not meta.get("name"):
            raise KubernetesError(status=422, reason="Invalid", message="metadata.name is required")
        key = (request.resource, meta.get("namespace"), meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise KubernetesError(status=409, reason="AlreadyExists", message=f"{meta['name']} already exists")
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self.next_version()
        meta["creationTimestamp"] = now()
        if "spec" in obj:
            meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        string_data_to_data(obj)
        async with self._lock:
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
            await self._buses[request.resource].put({"type": "ADDED", "object": obj})
        return aiohttp.web.json_response(obj, status=201)

    async def _patch(self, request):
        key = (request.resource, request.namespace, request.name)
        stored = self._objects[key] if key in self._objects else None
        current = None if stored is None or stored.deleted else copy.deepcopy(stored.raw)
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        data = request.data
        if current is None:
            if ctype == "application/apply-patch+yaml" and request.subresource is None:
                return await self._create(request, data)  # WORKAROUND 2: server-side apply upserts
            raise KubernetesObjectNotFoundError()
        if ctype == "application/json-patch+json":
            if not isinstance(data, list):
                raise KubernetesError(status=400, reason="BadRequest", message="JSON patch is not a list")
            # The API server's json-patch treats a missing member as null in `test` (kube's finalizer helper
            # tests `/metadata/finalizers` == null before adding the first one): such tests pass here too.
            missing = object()
            ops = [op for op in data if not (
                isinstance(op, dict) and op.get("op") == "test" and op.get("value") is None
                and jsonpointer.resolve_pointer(current, op.get("path", ""), missing) is missing)]
            try:
                new = jsonpatch.apply_patch(current, ops, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise KubernetesError(status=422, reason="Invalid", message=f"test failed: {e}")
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise KubernetesError(status=422, reason="Invalid", message=str(e))
        else:
            if not isinstance(data, dict):
                raise KubernetesError(status=400, reason="BadRequest", message="patch body is not an object")
            wanted = data.get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != current.get("metadata", {}).get("resourceVersion"):
                raise KubernetesError(status=409, reason="Conflict",
                                      message="the object has been modified; please apply your changes to the "
                                              "latest version and try again")
            new = merge_patch(current, data)
        # WORKAROUND 3: the status subresource.
        info = self.info(request.resource)
        if request.subresource == "status":
            new = dict(current, status=new.get("status")) if new.get("status") is not None else \
                {k: v for k, v in current.items() if k != "status"}
        elif info is not None and "status" in info.subresources:
            new.pop("status", None)
            if "status" in current:
                new["status"] = current["status"]
        string_data_to_data(new)
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
            if field in current.get("metadata", {}):
                meta[field] = current["metadata"][field]
        if without_version(new) == without_version(current):
            return aiohttp.web.json_response(current)  # WORKAROUND 2: a no-op patch changes nothing
        if new.get("spec") != current.get("spec") and "generation" in meta:
            meta["generation"] = int(meta["generation"]) + 1
        meta["resourceVersion"] = self.next_version()
        async with self._lock:
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._objects[key].create(new)
                self._objects[key].delete()
                await self._buses[request.resource].put({"type": "DELETED", "object": new})
            else:
                self._objects[key].create(new)
                await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
        return aiohttp.web.json_response(new)

    async def _render_error(self, exc):
        # WORKAROUND 8: kmock's 404s say `reason: Object Not Found` (and the like); clients test `NotFound`
        # (kube-rs's get_opt maps only that reason to None).
        if isinstance(exc, KubernetesNotFoundError):
            exc = KubernetesError(status=404, reason="NotFound", message=exc.message, details={"kmock": exc.reason})
        return await super()._render_error(exc)

    async def _serve_version(self, request):
        # WORKAROUND 6: kmock answers `/api/v1` with groupVersion "/v1", which kubectl does not recognise.
        answer = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            answer["groupVersion"] = request.resource.version
        return answer

    async def _serve_list(self, request):
        # WORKAROUND 4: kind and label selectors.
        answer = await super()._serve_list(request)
        info = self.info(request.resource)
        kind = info.kind if info is not None and info.kind else "Unknown"
        group, version = request.resource.group, request.resource.version
        selector = request.params.get("labelSelector", "")
        items = [o for o in answer["items"]
                 if selector_matches(selector, o.get("metadata", {}).get("labels") or {})]
        return {
            "kind": f"{kind}List",
            "apiVersion": f"{group}/{version}" if group else version,
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }


def register_crds(emulator: Emulator, path: str) -> None:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            names = spec["names"]
            for v in spec["versions"]:
                emulator.register(spec["group"], v["name"], names["plural"], names["kind"],
                                  spec.get("scope", "Namespaced") == "Namespaced",
                                  tuple(v.get("subresources", {}) or ()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--crd", action="append", default=[], help="YAML file with CustomResourceDefinitions")
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator() as emulator, Server(emulator, port=args.port) as server:
        for entry in RESOURCES:
            emulator.register(*entry)
        for path in args.crd:
            register_crds(emulator, path)
        print(f"kmock emulator listening on {server.url}".rstrip("/"), flush=True)
        await stop.wait()
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
