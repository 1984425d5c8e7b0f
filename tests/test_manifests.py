"""Kubernetes manifests: schema-valid objects, consistent kustomizations, hardened report app.

Every object in every file, and every object the GKE overlay produces, is validated against
the Kubernetes 1.3x OpenAPI schemas bundled with ``kubernetes-validate`` (offline, strict:
unknown fields are errors). There is no kustomize binary here, so the overlay is built the
way kustomize would for what it uses: the base's resources, its strategic-merge patches
(maps only, which the test checks, so a recursive dict merge is exact) and its ``images``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components import images
from testprio import client

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
BASE = MANIFESTS / "base"
GKE = MANIFESTS / "overlays" / "gke"
KUBERNETES_VERSIONS = ("1.30.0", "1.32.0", "1.34.0")
GCP_SERVICE_ACCOUNT = re.compile(
    r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@PROJECT_ID\.iam\.gserviceaccount\.com$"
)


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> dict:
    (doc,) = _documents(folder / "kustomization.yaml")
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert doc["kind"] == "Kustomization"
    return doc


def _key(obj: dict) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def _build(folder: Path) -> list[dict]:
    """The objects ``kubectl apply -k folder`` would apply (for the features used here)."""
    kustomization = _kustomization(folder)
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        objects += _build(path) if path.is_dir() else _documents(path)
    by_key = {_key(obj): obj for obj in objects}
    for patch in kustomization.get("patches", []):
        for doc in _documents(folder / patch["path"]):
            _merge(by_key[_key(doc)], doc)
    for image in kustomization.get("images", []):
        for container in _containers(objects):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image['newName']}:{image['newTag']}"
    return objects


def _merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        assert not isinstance(value, list), "patches must only set maps (see module docstring)"
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _containers(objects: list[dict]) -> list[dict]:
    pods = [obj["spec"]["template"]["spec"] for obj in objects if obj["kind"] == "Deployment"]
    return [c for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]


def _yaml_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


def _one(objects: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_in_every_file_is_valid(version):
    files = _yaml_files()
    assert len(files) >= 10
    for path in files:
        for obj in _documents(path):
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_of_the_gke_overlay_is_valid(version):
    objects = _build(GKE)
    assert len(objects) == len(_build(BASE))
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_base_kustomization_lists_exactly_its_files():
    listed = _kustomization(BASE)["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


def test_overlay_uses_every_file_and_its_patches_target_base_objects():
    kustomization = _kustomization(GKE)
    patches = [patch["path"] for patch in kustomization["patches"]]
    resources = kustomization["resources"]
    assert resources == ["../../base"]
    assert set(patches) == {p.name for p in GKE.glob("*.yaml")} - {"kustomization.yaml"}
    base = {_key(obj) for obj in _build(BASE)}
    for patch in patches:
        for doc in _documents(GKE / patch):
            assert _key(doc) in base, f"{patch} patches {_key(doc)}, which the base lacks"


def test_overlay_images_rename_the_report_app_image():
    base_images = {c["image"] for c in _containers(_build(BASE))}
    assert base_images == {images.REPORT_APP}  # the name components/images.py gives it
    for image in _kustomization(GKE)["images"]:
        assert any(ref.startswith(image["name"] + ":") for ref in base_images)
    assert {c["image"] for c in _containers(_build(GKE))} == {
        "REGION-docker.pkg.dev/PROJECT_ID/testprio/report-app:0.1.0"
    }


def test_report_app_runs_hardened_with_probes_and_resources():
    objects = _build(BASE)
    deployment = _one(objects, "Deployment", "report-app")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # USER of images/report-app
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8501)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/_stcore/health", "port": "http"}
    # The only writable place is an emptyDir, and HOME (Streamlit's scratch) points into it.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    home = next(e["value"] for e in container["env"] if e["name"] == "HOME")
    assert "emptyDir" in volumes[mounts[home]]
    settings = _one(objects, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])
    assert "TESTPRIO_REPORT_ROOT" in settings["data"]
    assert _one(objects, "Namespace", "testprio")["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"
    ] == ("restricted")


def test_service_and_network_policy_select_the_report_app():
    objects = _build(BASE)
    pod_labels = _one(objects, "Deployment", "report-app")["spec"]["template"]["metadata"]["labels"]
    service = _one(objects, "Service", "report-app")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    policy = _one(objects, "NetworkPolicy", "report-app-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_service_accounts_use_workload_identity_and_no_keys():
    objects = _build(GKE)
    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    accounts = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ServiceAccount"}
    assert set(accounts) == {"report-app", client.PIPELINE_SERVICE_ACCOUNT}
    for account in accounts.values():
        annotation = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert GCP_SERVICE_ACCOUNT.match(annotation), annotation
    runner = accounts[client.PIPELINE_SERVICE_ACCOUNT]
    assert runner["metadata"]["namespace"] == "kubeflow"  # where KFP standalone runs pipelines
    binding = _one(objects, "RoleBinding", client.PIPELINE_SERVICE_ACCOUNT)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "pipeline-runner",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": client.PIPELINE_SERVICE_ACCOUNT, "namespace": "kubeflow"}
    ]
