"""The Kubernetes manifests, checked offline: schemas, rendering, and the rules docs/deployment.md promises.

No cluster is used: every document is validated against the Kubernetes API
schemas bundled with ``kubernetes-validate``, and each overlay is rendered with
``kubectl kustomize`` (``.ci/run`` installs kubectl when the machine has none).
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from contract.settings import Settings
from tests.conftest import PROJECT_DIR

K8S = PROJECT_DIR / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
SETTINGS_NAMES = {f.validation_alias for f in Settings.model_fields.values()}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found: install it (.ci/run does) to render the kustomize overlays"
    done = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def by_kind(docs: tuple[dict, ...], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: tuple[dict, ...]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", c) for d in docs
            if d["kind"] in ("Deployment", "StatefulSet") for c in d["spec"]["template"]["spec"]["containers"]]


MANIFESTS = sorted((K8S / "base").glob("*.yaml")) + sorted((K8S / "overlays").glob("*/*.yaml")) \
    + [K8S / "secret.example.yaml"]
RESOURCE_FILES = [p for p in MANIFESTS if p.name != "kustomization.yaml" and "overlays" not in p.parts]


@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_every_base_document_is_valid_kubernetes(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_to_valid_kubernetes(overlay):
    docs = rendered(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1 and None not in namespaces  # everything in the overlay's namespace
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "ConfigMap",
            "PersistentVolumeClaim", "NetworkPolicy", "Ingress"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_rendered_and_every_container_has_requests_and_limits(overlay):
    docs = rendered(overlay)
    assert not by_kind(docs, "Secret")  # secrets are created by the operator, never committed
    for name, container in containers(docs):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
        assert {"cpu", "memory"} <= set(resources.get("limits", {})), name


def test_probes_hit_the_routes_the_services_have():
    docs = rendered("production")
    deployments = by_kind(docs, "Deployment")
    probes = {name: {kind: deployments[name]["spec"]["template"]["spec"]["containers"][0][kind]["httpGet"]["path"]
                     for kind in ("readinessProbe", "livenessProbe")}
              for name in ("gateway", "model-server", "mlflow")}
    assert probes["gateway"] == {"readinessProbe": "/ready", "livenessProbe": "/health"}
    assert probes["model-server"] == {"readinessProbe": "/ping", "livenessProbe": "/status"}
    assert probes["mlflow"] == {"readinessProbe": "/health", "livenessProbe": "/health"}
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"gateway", "model-server"}


def component(policy: dict) -> set[str]:
    selector = policy["spec"]["podSelector"]
    if "matchLabels" in selector:
        return {selector["matchLabels"]["app.kubernetes.io/component"]}
    return {v for e in selector.get("matchExpressions", []) for v in e["values"]}


def allowed_from(policy: dict) -> set[str] | None:
    """Components allowed in; None when the policy admits any source."""
    sources: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        if "from" not in rule:
            return None
        for peer in rule["from"]:
            sources |= component({"spec": {"podSelector": peer["podSelector"]}})
    return sources


def test_network_policies_let_only_the_gateway_reach_the_model_server():
    policies = by_kind(rendered("production"), "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    admitted = {}
    for policy in policies.values():
        for target in component(policy):
            admitted[target] = allowed_from(policy)
    assert admitted["model-server"] == {"gateway"}
    assert admitted["mlflow"] == {"gateway", "trainer", "model-server"}  # the model server loads artifacts
    assert admitted["postgres"] == {"mlflow", "gateway", "trainer"}  # the registry; the inference log
    assert admitted["gateway"] is None and admitted["trainer"] is None  # the entry points


def test_app_containers_use_real_settings_names_and_the_secret_names_its_keys():
    docs = rendered("production")
    config = by_kind(docs, "ConfigMap")
    (config_map,) = config.values()
    assert set(config_map["data"]) <= SETTINGS_NAMES, set(config_map["data"]) - SETTINGS_NAMES
    secret_keys = {doc["metadata"]["name"]: set(doc["stringData"]) for doc in documents(K8S / "secret.example.yaml")}
    for name, container in containers(docs):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secret_keys[ref["name"]], (name, ref)
            elif container["name"] not in ("postgres",):
                assert env["name"] in SETTINGS_NAMES | READ_BY_MLFLOW, (name, env["name"])


READ_BY_MLFLOW = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}  # the services' identity toward MLflow


def _sources(container: dict) -> dict[str, dict]:
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container.get("env", [])}


def test_gateway_auth_mlflow_turns_on_the_auth_app_and_the_services_act_as_its_admin():
    docs = rendered("production")
    (config_map,) = by_kind(docs, "ConfigMap").values()
    assert config_map["data"]["GATEWAY_AUTH"] == "token"  # one line to switch to mlflow
    deployments = by_kind(docs, "Deployment")
    (mlflow,) = deployments["mlflow"]["spec"]["template"]["spec"]["containers"]
    assert mlflow["args"][:5] == ["python", "-m", "stack.tracking_auth", "mlflow", "server"]
    server = _sources(mlflow)
    assert server["GATEWAY_AUTH"]["configMapKeyRef"]["key"] == "GATEWAY_AUTH"
    admin_name = server["MLFLOW_AUTH_ADMIN_USERNAME"]
    admin_password = server["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert admin_password["secretKeyRef"]["key"] == "MLFLOW_AUTH_ADMIN_PASSWORD"
    for name in ("gateway", "trainer", "model-server"):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        env = _sources(container)
        assert env["MLFLOW_TRACKING_USERNAME"] == admin_name, name
        assert env["MLFLOW_TRACKING_PASSWORD"] == admin_password, name
        if name != "model-server":  # the gateway's own admin calls (grants, permission checks)
            assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == admin_password, name


def test_the_ingress_sends_training_to_the_trainer_and_the_rest_to_the_gateway():
    (ingress,) = by_kind(rendered("production"), "Ingress").values()
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/train": "trainer", "/": "gateway"}
    gateway = by_kind(rendered("production"), "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "GATEWAY_TRAINING", "value": "false"} in gateway["env"]
