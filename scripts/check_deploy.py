#!/usr/bin/env python3
"""Check the deployment files offline: deploy/*.yaml against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), the links between them, and
the Dockerfile's shape; every `mllm` flag they use must exist in the binary's help.

Usage: python3 scripts/check_deploy.py --mllm target/release/mllm [--kubernetes 1.33.0]

The pinned validator (it ships the schemas: no cluster, no network once installed) is
installed on first use into a virtual environment outside the repository (default
~/.cache/mllm/venv-deploy, or $MLLM_DEPLOY_VENV), and the script re-runs itself with that
environment's Python. Ends with 'N passed, M failed'; exits non-zero on any failure.
"""

import argparse
import os
import re
import subprocess
import sys
import venv

VALIDATOR = "kubernetes-validate"
VALIDATOR_VERSION = "1.37.0"
VENV = os.environ.get("MLLM_DEPLOY_VENV") or os.path.join(os.path.expanduser("~"), ".cache", "mllm", "venv-deploy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def have_validator():
    try:
        from kubernetes_validate.version import __version__
    except ImportError:
        return False
    return __version__ == VALIDATOR_VERSION


def ensure_validator():
    """Re-run this script inside the venv that has the pinned validator (create it if missing)."""
    if have_validator():
        return
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        sys.exit(f"the venv {VENV} lacks {VALIDATOR}=={VALIDATOR_VERSION} even after installing it")
    probe = f"from kubernetes_validate.version import __version__ as v; import sys; sys.exit(v != '{VALIDATOR_VERSION}')"
    ok = os.path.exists(py) and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0
    if not ok:
        print(f"installing {VALIDATOR}=={VALIDATOR_VERSION} into {VENV}", file=sys.stderr, flush=True)
        if not os.path.exists(py):
            venv.create(VENV, with_pip=True)
        subprocess.run(
            [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{VALIDATOR}=={VALIDATOR_VERSION}"],
            check=True,
        )
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


passed, failed = 0, 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", flush=True)


def flags_in(args):
    """The --flags in a command line (without values)."""
    return {a.split("=", 1)[0] for a in args if isinstance(a, str) and a.startswith("--")}


def help_flags(mllm, command):
    out = subprocess.run([mllm, command, "--help"], capture_output=True, text=True, timeout=60)
    check(out.returncode == 0, f"mllm {command} --help runs: {out.stderr}")
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def check_manifests(args, docs):
    import kubernetes_validate.utils as kv

    by_kind = {}
    for path, doc in docs:
        name = f"{os.path.basename(path)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, args.kubernetes, strict=True)
            check(True, name)
        except Exception as e:  # the validator's errors carry the path of the bad field
            check(False, f"{name} does not validate against Kubernetes {args.kubernetes}: {getattr(e, 'message', e)}")
        by_kind.setdefault(doc["kind"], []).append(doc)
    # The validator is strict: a misspelt field fails (so a pass means something).
    dep0 = next((d for _, d in docs if d.get("kind") == "Deployment"), None)
    if dep0 is not None:
        import copy

        bad = copy.deepcopy(dep0)
        bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
        try:
            kv.validate(bad, args.kubernetes, strict=True)
            check(False, "a misspelt field (readinesProbe) is refused")
        except Exception:
            check(True, "a misspelt field is refused")
    for kind in ["Deployment", "Service", "HorizontalPodAutoscaler"]:
        check(len(by_kind.get(kind, [])) == 1, f"exactly one {kind} in deploy/")
    if failed:
        return
    dep, svc, hpa = by_kind["Deployment"][0], by_kind["Service"][0], by_kind["HorizontalPodAutoscaler"][0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    check(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the Deployment selects its own pods")
    check(svc["spec"]["selector"].items() <= labels.items(), "the Service selects the Deployment's pods")
    check(svc["spec"].get("sessionAffinity") == "ClientIP", "the Service keeps a client on one replica")
    containers = pod["spec"]["containers"]
    server = next((c for c in containers if c.get("args", [None])[0] == "serve"), None)
    check(server is not None, "a container runs 'mllm serve'")
    if server is None:
        return
    ports = {p.get("name"): p["containerPort"] for p in server.get("ports", [])}
    for sp in svc["spec"]["ports"]:
        tp = sp.get("targetPort")
        check(tp in ports or tp in ports.values(), f"the Service's targetPort {tp} is a container port")
    argv = [str(a) for a in server["args"]]
    port = argv[argv.index("--port") + 1] if "--port" in argv else "8080"
    check(int(port) in ports.values(), f"the server listens on its declared port ({port})")
    check(argv[argv.index("--host") + 1] == "0.0.0.0" if "--host" in argv else False, "the server listens beyond loopback")
    ready = server.get("readinessProbe", {}).get("httpGet", {})
    check(ready.get("path") == "/health", "readiness asks /health")
    check(ready.get("port") in ports or ready.get("port") in ports.values(), "readiness asks the server's port")
    check("livenessProbe" in server, "a liveness probe")
    res = server.get("resources", {})
    for part in ["requests", "limits"]:
        for r in ["cpu", "memory"]:
            check(r in res.get(part, {}), f"resources.{part}.{r} set")
    serve_flags = help_flags(args.mllm, "serve")
    unknown = flags_in(argv[1:]) - serve_flags
    check(not unknown, f"mllm serve knows every flag the Deployment gives: unknown {sorted(unknown)}")
    if "--shutdown-timeout" in argv:
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        check(grace > float(argv[argv.index("--shutdown-timeout") + 1]), "the grace period outlasts --shutdown-timeout")
    pull_flags = help_flags(args.mllm, "pull")
    for init in pod["spec"].get("initContainers", []):
        a = [str(x) for x in init.get("args", [])]
        if a[:1] == ["pull"]:
            unknown = flags_in(a[1:]) - pull_flags
            check(not unknown, f"mllm pull knows the init container's flags: unknown {sorted(unknown)}")
    target = hpa["spec"]["scaleTargetRef"]
    check(
        (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"]),
        "the autoscaler scales the Deployment",
    )
    check(1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"], "min replicas <= max replicas")
    check(
        any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])),
        "the autoscaler's CPU target has a CPU request to measure against",
    )


def check_dockerfile(args):
    path = os.path.join(ROOT, "Dockerfile")
    text = open(path).read()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, "the Dockerfile has a build stage and a runtime stage")
    check(any(re.search(r"--from=", l) for l in lines if l.upper().startswith("COPY ")), "the runtime copies from the build")
    last = text.rsplit("\nFROM ", 1)[-1]
    users = re.findall(r"^USER\s+(\S+)", last, re.M)
    check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage runs as a non-root user")
    check(re.search(r"^ARG MODEL", last, re.M) is not None, "a build argument bakes a model in")
    check(re.search(r"^VOLUME .*/models", last, re.M) is not None, "the model cache is a volume")
    check("MLLM_CACHE=/models" in last, "the cache points at the volume")
    exposed = re.findall(r"^EXPOSE\s+(\d+)", last, re.M)
    cmd = re.search(r"^CMD\s+(\[.*\])", last, re.M)
    check(cmd is not None, "a CMD in exec form")
    if cmd:
        import json

        argv = json.loads(cmd.group(1))
        unknown = flags_in(argv[1:]) - help_flags(args.mllm, argv[0])
        check(not unknown, f"mllm {argv[0]} knows the CMD's flags: unknown {sorted(unknown)}")
        port = argv[argv.index("--port") + 1] if "--port" in argv else "8080"
        check(port in exposed, f"the CMD's port {port} is exposed")
    ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
    check("target" in ignore, ".dockerignore keeps target/ out of the build context")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mllm", required=True, help="the mllm binary (its --help lists the flags)")
    ap.add_argument("--kubernetes", default="1.33.0", help="Kubernetes version to validate against")
    args = ap.parse_args()
    ensure_validator()
    import yaml

    deploy = os.path.join(ROOT, "deploy")
    docs = []
    for name in sorted(os.listdir(deploy)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(deploy, name)) as f:
                docs += [(name, d) for d in yaml.safe_load_all(f) if d]
    check(len(docs) >= 3, f"manifests found in {deploy}")
    check_manifests(args, docs)
    check_dockerfile(args)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
