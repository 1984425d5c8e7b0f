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
KFP_RUNTIME = MANIFESTS / "components" / "kfp-runtime"
KUBERNETES_VERSIONS = ("1.30.0", "1.32.0", "1.34.0")
GCP_SERVICE_ACCOUNT = re.compile(
    r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@PROJECT_ID\.iam\.gserviceaccount\.com$"
)


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> dict:
    (doc,) = _documents(folder / "kustomization.yaml")
    assert (doc["apiVersion"], doc["kind"]) in {
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        ("kustomize.config.k8s.io/v1alpha1", "Component"),
    }
    return doc


def _key(obj: dict) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def _build(folder: Path, objects: list[dict] | None = None) -> list[dict]:
    """The objects ``kubectl apply -k folder`` would apply (for the features used here).

    A Component adds its resources to ``objects`` (what was built so far) and patches them.
    """
    kustomization = _kustomization(folder)
    objects = [] if objects is None else objects
    for resource in kustomization.get("resources", []):
        path = folder / resource
        objects += _build(path) if path.is_dir() else _documents(path)
    for component in kustomization.get("components", []):
        objects = _build(folder / component, objects)
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


def _pods(objects: list[dict]) -> list[dict]:
    return [obj["spec"]["template"]["spec"] for obj in objects if obj["kind"] == "Deployment"]


def _containers(objects: list[dict]) -> list[dict]:
    return [c for pod in _pods(objects) for c in pod.get("initContainers", []) + pod["containers"]]


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
    # The base, plus the kfp-runtime component's Role, RoleBinding and NetworkPolicy.
    assert len(objects) == len(_build(BASE)) + 3
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


def _bindings_of(objects: list[dict], account: dict) -> list[dict]:
    name, namespace = account["metadata"]["name"], account["metadata"]["namespace"]
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    return [
        obj
        for obj in objects
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and subject in obj.get("subjects", [])
    ]


def test_no_binding_grants_our_service_accounts_anything():
    objects = _build(BASE)
    assert not [obj for obj in objects if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    accounts = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
    assert {a["metadata"]["name"] for a in accounts} == {
        "report-app",
        client.PIPELINE_SERVICE_ACCOUNT,
    }
    for account in accounts:
        assert _bindings_of(objects, account) == [], account["metadata"]["name"]
        # Neither the pipeline's task code nor the report app calls the Kubernetes API.
        assert account["automountServiceAccountToken"] is False, account["metadata"]["name"]
    for pod in _pods(objects):
        assert pod["automountServiceAccountToken"] is False


def test_cli_submits_with_the_manifests_pipeline_account():
    from testprio import cli

    args = cli.build_parser().parse_args(
        ["submit", "--model", "m.onnx", "--data", "d.npz", "--root", "gs://b/runs"]
    )
    assert args.service_account == client.PIPELINE_SERVICE_ACCOUNT
    names = {o["metadata"]["name"] for o in _build(BASE) if o["kind"] == "ServiceAccount"}
    assert client.PIPELINE_SERVICE_ACCOUNT in names


def test_kfp_runtime_component_grants_only_what_kfp_needs():
    kustomization = _kustomization(KFP_RUNTIME)
    assert kustomization["kind"] == "Component"
    listed = kustomization["resources"] + [patch["path"] for patch in kustomization["patches"]]
    assert set(listed) == {p.name for p in KFP_RUNTIME.glob("*.yaml")} - {"kustomization.yaml"}
    # The GKE overlay includes the component: its rights are exactly these and no more.
    assert "../../components/kfp-runtime" in _kustomization(GKE)["components"]
    objects = _build(GKE)
    runner = _one(objects, "ServiceAccount", client.PIPELINE_SERVICE_ACCOUNT)
    assert runner["automountServiceAccountToken"] is True  # KFP's launcher reads the token
    (binding,) = _bindings_of(objects, runner)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",  # namespaced: never a ClusterRole
        "name": "testprio-kfp-runtime",
    }
    role = _one(objects, "Role", "testprio-kfp-runtime")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "kubeflow"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["kfp-launcher"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflowtaskresults"],
            "verbs": ["create", "patch"],
        },
    ]
    # The report app keeps no token and no binding.
    app = _one(objects, "ServiceAccount", "report-app")
    assert app["automountServiceAccountToken"] is False and not _bindings_of(objects, app)
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("folder", [BASE, GKE], ids=["base", "gke"])
def test_every_container_runs_restricted(folder):
    objects = _build(folder)
    assert _containers(objects)
    for pod in _pods(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod.get("initContainers", []) + pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, container["name"]
            assert security["runAsUser"] == security["runAsGroup"] == 10001, container["name"]
            assert security["readOnlyRootFilesystem"] is True, container["name"]
            assert security["allowPrivilegeEscalation"] is False, container["name"]
            assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]


def test_report_app_shows_no_error_details():
    objects = _build(BASE)
    pod = _one(objects, "Deployment", "report-app")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["streamlit", "run", "report_app/app.py"]
    assert "--client.showErrorDetails=none" in container["command"]
    settings = _one(objects, "ConfigMap", "report-app-settings")
    assert settings["data"]["STREAMLIT_CLIENT_SHOW_ERROR_DETAILS"] == "none"
    dockerfile = (MANIFESTS.parent / "images" / "report-app" / "Dockerfile").read_text()
    assert '"--client.showErrorDetails=none"]' in dockerfile
    assert "STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=none" in dockerfile


def _policies(objects: list[dict], namespace: str, labels: dict) -> list[dict]:
    """The NetworkPolicies of ``namespace`` that select pods labelled ``labels``."""
    return [
        obj
        for obj in objects
        if obj["kind"] == "NetworkPolicy"
        and obj["metadata"]["namespace"] == namespace
        and obj["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]


def _cidrs(egress: list[dict]) -> set[str]:
    return {peer["ipBlock"]["cidr"] for rule in egress for peer in rule["to"] if "ipBlock" in peer}


GOOGLE_APIS_AND_METADATA = {"199.36.153.8/30", "169.254.169.254/32", "169.254.169.252/32"}


def test_pipeline_pods_are_denied_by_default_but_dns_google_apis_and_kfp():
    from pipelines.prioritize import TASK_POD_LABELS

    # The base alone: the GKE overlay adds the one API-server rule of the kfp-runtime component.
    policies = _policies(_build(BASE), "kubeflow", TASK_POD_LABELS)
    deny = _one(policies, "NetworkPolicy", "testprio-pipeline-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    assert not [p for p in policies if p["spec"].get("ingress")]  # nothing lets anything in
    egress = [rule for p in policies for rule in p["spec"].get("egress", [])]
    for rule in egress:
        assert rule["to"] and rule["ports"], rule  # never an allow-all rule
    ports = {(port["port"], port["protocol"]) for rule in egress for port in rule["ports"]}
    assert ports == {
        (53, "UDP"),
        (53, "TCP"),
        (443, "TCP"),
        (80, "TCP"),
        (988, "TCP"),
        (8887, "TCP"),
        (8080, "TCP"),
    }
    assert _cidrs(egress) == GOOGLE_APIS_AND_METADATA
    in_cluster = [peer for rule in egress for peer in rule["to"] if "ipBlock" not in peer]
    assert {"k8s-app": "kube-dns"} in [peer["podSelector"]["matchLabels"] for peer in in_cluster]


def test_report_app_egress_is_denied_but_dns_and_google_apis():
    objects = _build(GKE)
    labels = _one(objects, "Deployment", "report-app")["spec"]["template"]["metadata"]["labels"]
    policies = _policies(objects, "testprio", labels)
    (egress_policy,) = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
    egress = egress_policy["spec"]["egress"]
    assert _cidrs(egress) == GOOGLE_APIS_AND_METADATA
    assert {port["port"] for rule in egress for port in rule["ports"]} == {53, 443, 80, 988}
