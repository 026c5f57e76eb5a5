#!/usr/bin/env python3
"""Offline validation of everything under deploy/ (and the Dockerfile).

    python3 deploy/validate/validate.py FILE.yaml...        # manifests
    python3 deploy/validate/validate.py --dockerfile Dockerfile

Tools come from <repo>/.tools/validate/ (scripts/install-tools.sh installs them
from PyPI and npm; override the location with STSGATE_TOOLS=<dir>):

* Kubernetes kinds: PyPI `kubernetes-validate` (the Kubernetes OpenAPI as JSON
  Schema, bundled per release), in its *strict* mode (unknown fields are errors,
  as with `kubectl apply` field validation), against every version in
  K8S_VERSIONS. A kind it has no schema for is an error, never a warning.
* Istio kinds: Istio's real CRD schemas (npm `@kubernetes-models/istio`, run by
  istio_crd_validate.mjs under node) AND schemas/istio-strict.schema.json
  (closed objects; MeshConfig extensionProviders, which have no CRD).
* kustomize Kustomization: schemas/kustomization.schema.json, and every listed
  resource must exist.
* Dockerfile: parsed by BuildKit's own parser (PyPI `dockerfile`), then checked
  for the shape the deployment relies on.

Prints one line per document ("ok" or "FAIL") and exits 0 when all pass, 1
when any fails, 2 when the tools are missing or the input cannot be read.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS = Path(os.environ.get("STSGATE_TOOLS") or REPO / ".tools") / "validate"
PY_DIR = TOOLS / "py"
NODE_MODULES = TOOLS / "node" / "node_modules"

# Oldest Kubernetes these manifests claim to support (native gRPC probes are
# GA since 1.27) and the newest whose schemas the pinned package bundles.
K8S_VERSIONS = ["1.28", "1.37"]

ISTIO_KINDS = {
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "RequestAuthentication"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("install.istio.io/v1alpha1", "IstioOperator"),
}
KUSTOMIZE = ("kustomize.config.k8s.io/v1beta1", "Kustomization")


def missing_tools(what):
    print(f"validate: {what} is not installed under {TOOLS}: run scripts/install-tools.sh", file=sys.stderr)
    sys.exit(2)


if not PY_DIR.is_dir():
    missing_tools("the Python validator environment")
sys.path.insert(0, str(PY_DIR))
try:
    import jsonschema
    import kubernetes_validate
    import yaml
    from referencing import Registry, Resource
except ImportError as e:  # pragma: no cover - depends on the install
    missing_tools(f"a Python package ({e.name})")


def dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 - only for the report
        return "?"


def load_schema(name):
    return json.loads((HERE / "schemas" / name).read_text())


def schema_errors(schema, doc, ref=None):
    """All errors of `doc` against `schema` (or one of its $defs), sorted by path."""
    registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
    target = {"$ref": f"{schema['$id']}#/$defs/{ref}"} if ref else schema
    validator = jsonschema.Draft202012Validator(target, registry=registry)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    out = []
    for e in errors:
        # oneOf/anyOf/if-then failures: the most specific cause reads better.
        best = jsonschema.exceptions.best_match([e]) if e.context else e
        path = ".".join(str(p) for p in best.absolute_path) or "(root)"
        out.append(f"{path}: {best.message}")
    return out


def describe(doc):
    kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name", "?") if isinstance(meta, dict) else "-"
    return f"{kind}/{name}"


def check_kubernetes(doc):
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            errors.append(f"Kubernetes {e.version} (strict): {path}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            errors.append(f"no Kubernetes schema: {e.message}")
        except kubernetes_validate.utils.VersionNotSupportedError as e:
            errors.append(f"kubernetes-validate does not support Kubernetes {e.version}")
    return errors, [f"kubernetes-validate {dist_version('kubernetes-validate')} strict (k8s {', '.join(K8S_VERSIONS)})"]


def check_istio_crds(docs):
    """Runs Istio's CRD schemas over all Istio docs in one node process."""
    if not docs:
        return []
    if not (NODE_MODULES / "@kubernetes-models" / "istio" / "package.json").is_file():
        missing_tools("npm @kubernetes-models/istio")
    node = os.environ.get("NODE", "node")
    env = dict(os.environ, STSGATE_NODE_MODULES=str(NODE_MODULES))
    try:
        proc = subprocess.run(
            [node, str(HERE / "istio_crd_validate.mjs")],
            input=json.dumps(docs), capture_output=True, text=True, env=env, timeout=120,
        )
    except FileNotFoundError:
        print(f"validate: cannot run node ({node}): Node.js is needed for the Istio CRD schemas", file=sys.stderr)
        sys.exit(2)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        print(f"validate: istio_crd_validate.mjs exited with {proc.returncode}", file=sys.stderr)
        sys.exit(2)
    results = json.loads(proc.stdout)
    assert len(results) == len(docs)
    return [[] if r["ok"] else [f"Istio CRD schema: {r['error']}"] for r in results]


def istio_crd_version():
    try:
        meta = json.loads((NODE_MODULES / "@kubernetes-models" / "istio" / "package.json").read_text())
        return meta["version"]
    except (OSError, ValueError, KeyError):
        return "?"


def check_kustomization(doc, path):
    errors = schema_errors(load_schema("kustomization.schema.json"), doc)
    for res in doc.get("resources") or []:
        if isinstance(res, str) and not (path.parent / res).exists():
            errors.append(f"resources: {res} does not exist next to {path.name}")
    return errors


def validate_manifests(files):
    istio_strict = load_schema("istio-strict.schema.json")
    entries = []  # (label, errors, checked_by)
    istio_docs, istio_slots = [], []
    for name in files:
        path = Path(name)
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as e:
            entries.append((str(path), [f"cannot read YAML: {e}"], []))
            continue
        if not docs:
            entries.append((str(path), ["no YAML documents"], []))
        for i, doc in enumerate(docs):
            label = f"{path}#{i + 1} {describe(doc)}"
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                entries.append((label, ["not a Kubernetes object (apiVersion and kind required)"], []))
                continue
            key = (doc["apiVersion"], doc["kind"])
            if key in ISTIO_KINDS:
                errs = [f"strict Istio schema: {m}" for m in schema_errors(istio_strict, doc, ref=doc["kind"])]
                entries.append((label, errs, [f"Istio CRD schemas (@kubernetes-models/istio {istio_crd_version()})", "istio-strict.schema.json"]))
                istio_docs.append(doc)
                istio_slots.append(len(entries) - 1)
            elif key == KUSTOMIZE:
                entries.append((label, check_kustomization(doc, path), ["kustomization.schema.json"]))
            elif "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].split("/")[0].endswith(".k8s.io"):
                entries.append((label, [f"no schema known for {key[0]} {key[1]}"], []))
            else:
                errs, by = check_kubernetes(doc)
                entries.append((label, errs, by))
    for slot, errs in zip(istio_slots, check_istio_crds(istio_docs)):
        label, own, by = entries[slot]
        entries[slot] = (label, errs + own, by)

    failed = 0
    for label, errs, by in entries:
        if errs:
            failed += 1
            print(f"FAIL {label}")
            for e in errs:
                print(f"     - {e}")
        else:
            print(f"ok   {label}  [{'; '.join(by)}]")
    print(f"{len(entries) - failed} passed, {failed} failed")
    return 1 if failed else 0


# --- Dockerfile -------------------------------------------------------------

def dockerignore_patterns(context):
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
                if pat.startswith("/", i):
                    rx = rx[:-2] + "(?:.*/)?"
                    i += 1
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((re.compile(f"^{rx}$"), negate))
    return out


def excluded(rel, patterns):
    """Docker semantics, simplified: last matching pattern wins; a pattern that
    matches a parent directory excludes everything below it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for rx, negate in patterns:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


def validate_dockerfile(path):
    try:
        import dockerfile
    except ImportError:
        missing_tools("PyPI dockerfile")
    path = Path(path)
    context = path.parent
    errors = []
    try:
        cmds = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        print(f"FAIL {path}: BuildKit parser: {e}")
        return 1

    args = {}
    stages = []  # each: dict(image, name, cmds)
    for c in cmds:
        if c.cmd == "ARG" and not stages:
            for v in c.value:
                k, _, d = v.partition("=")
                args[k] = d
        elif c.cmd == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), c.value[0])
            name = c.value[2] if len(c.value) >= 3 and c.value[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "cmds": []})
        elif stages:
            stages[-1]["cmds"].append(c)
    if len(stages) < 2:
        errors.append("not a multi-stage build (builder + runtime)")
    else:
        build, final = stages[0], stages[-1]
        runs = " ".join(" ".join(c.value) for c in build["cmds"] if c.cmd == "RUN")
        if not re.search(r"cargo build\b[^&;]*--release\b[^&;]*--locked\b", runs):
            errors.append("the build stage does not run `cargo build --release --locked`")
        if not build["image"].startswith("rust:"):
            errors.append(f"the build stage is {build['image']}, not an official rust image")
        user = [c.value[0] for c in final["cmds"] if c.cmd == "USER"]
        if not user:
            errors.append("the runtime stage sets no USER (it would run as root)")
        elif user[-1].split(":")[0] in ("0", "root"):
            errors.append(f"the runtime stage runs as {user[-1]}")
        elif not user[-1].split(":")[0].isdigit():
            errors.append(f"USER {user[-1]} is not numeric: Kubernetes runAsNonRoot cannot verify a user name")
        entry = [c for c in final["cmds"] if c.cmd == "ENTRYPOINT"]
        if not entry or not entry[-1].json or not entry[-1].value[0].endswith("/stsgate"):
            errors.append("the runtime stage needs an exec-form ENTRYPOINT running stsgate")
        exposed = {p.split("/")[0] for c in final["cmds"] if c.cmd == "EXPOSE" for p in c.value}
        for port in ("9191", "8080"):
            if port not in exposed:
                errors.append(f"the runtime stage does not EXPOSE {port}")
        stage_names = {s["name"] for s in stages if s["name"]}
        copies = [c for c in final["cmds"] if c.cmd == "COPY"]
        if not any(f.startswith("--from=") and f.split("=", 1)[1] in stage_names for c in copies for f in c.flags):
            errors.append("the runtime stage copies nothing from the build stage")

    # Every COPY source from the context must exist and survive .dockerignore,
    # including every file below a copied directory (include_str!, protos).
    patterns = dockerignore_patterns(context)
    for stage in stages:
        for c in stage["cmds"]:
            if c.cmd not in ("COPY", "ADD") or any(f.startswith("--from=") for f in c.flags):
                continue
            for src in c.value[:-1]:
                p = context / src
                if not p.exists():
                    errors.append(f"{c.cmd} {src}: not in the build context")
                    continue
                files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
                for f in files:
                    rel = f.relative_to(context).as_posix()
                    if excluded(rel, patterns):
                        errors.append(f"{c.cmd} {src}: {rel} is excluded by .dockerignore")

    if errors:
        print(f"FAIL {path}")
        for e in errors:
            print(f"     - {e}")
        print("0 passed, 1 failed")
        return 1
    print(f"ok   {path}  [BuildKit parser (PyPI dockerfile {dist_version('dockerfile')}); "
          f"stages: {', '.join(s['image'] for s in stages)}]")
    print("1 passed, 0 failed")
    return 0


def main(argv):
    if len(argv) == 2 and argv[0] == "--dockerfile":
        return validate_dockerfile(argv[1])
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    return validate_manifests(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
