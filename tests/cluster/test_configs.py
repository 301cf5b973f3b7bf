"""The cluster's configuration files: the launcher YAML against Ray's own schema, the KubeRay RayJob and MLflow
manifests against the structure KubeRay and Kubernetes need, token authentication on everywhere."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER = REPO_ROOT / "cluster"
RAY_IMAGE = re.compile(r"^rayproject/ray:(\d+\.\d+\.\d+)-py3\d+(-gpu|-cu\d+)?$")

# The parts of KubeRay's ray.io/v1 RayJob that MixBench relies on (KubeRay >= 1.6 field names).
CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {"name": {"type": "string"}, "image": {"type": "string", "pattern": RAY_IMAGE.pattern}},
}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER}},
        }
    },
}
GPU_CONTAINER = {
    "type": "object",
    "required": ["resources"],
    "properties": {
        "resources": {
            "type": "object",
            "required": ["limits"],
            "properties": {
                "limits": {
                    "type": "object",
                    "required": ["nvidia.com/gpu"],
                    "properties": {"nvidia.com/gpu": {"type": ["string", "integer"], "pattern": "^[1-9][0-9]*$"}},
                }
            },
        }
    },
}
GPU_POD_SPEC = {"properties": {"containers": {"items": GPU_CONTAINER}}}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "entrypoint": {"type": "string", "pattern": r"^mixbench search "},
                "runtimeEnvYAML": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"]},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["rayVersion", "authOptions", "headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "authOptions": {
                            "type": "object",
                            "required": ["mode", "secretName"],
                            "properties": {
                                "mode": {"const": "token"},
                                "secretName": {"type": "string", "minLength": 1},
                            },
                            "additionalProperties": False,
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {"template": POD_TEMPLATE, "rayStartParams": {"type": "object"}},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["groupName", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                    "template": {
                                        "allOf": [POD_TEMPLATE, {"properties": {"spec": GPU_POD_SPEC}}]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def launcher_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_launcher_yaml_matches_rays_schema_and_ray_accepts_it():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("aws-gpu.yaml")
    jsonschema.validate(config, launcher_schema())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs: defaults filled, node types checked


def test_launcher_schema_check_can_fail():
    config = load("aws-gpu.yaml")
    config["available_node_types"]["gpu_worker"].pop("node_config")
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        jsonschema.validate(config, launcher_schema())


def test_launcher_runs_ray_of_this_version_on_gpu_workers_with_token_auth():
    config = load("aws-gpu.yaml")
    image = RAY_IMAGE.fullmatch(config["docker"]["image"])
    assert image and image.group(1) == ray.__version__ and image.group(2) == "-gpu"
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["head_node_type"] == "head" and config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "cluster/mlflow-server.sh" in head_start


def test_rayjob_manifest_has_gpu_workers_token_secret_and_search_entrypoint():
    manifest = load("kuberay-rayjob.yaml")
    jsonschema.validate(manifest, RAYJOB_SCHEMA)
    cluster = manifest["spec"]["rayClusterSpec"]
    images = [c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]] + [
        c["image"] for group in cluster["workerGroupSpecs"] for c in group["template"]["spec"]["containers"]
    ]
    assert cluster["rayVersion"] == ray.__version__
    assert all(RAY_IMAGE.fullmatch(image).group(1) == ray.__version__ for image in images)
    runtime_env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://")
    assert "--storage-path s3://" in manifest["spec"]["entrypoint"]


def test_rayjob_schema_refuses_a_cluster_without_token_auth():
    manifest = load("kuberay-rayjob.yaml")
    manifest["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "disabled"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, RAYJOB_SCHEMA)
    manifest = load("kuberay-rayjob.yaml")
    del manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        jsonschema.validate(manifest, RAYJOB_SCHEMA)


def test_mlflow_k8s_serves_artifacts_inside_the_cluster_only():
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / "mlflow-k8s.yaml").read_text())}
    assert set(documents) == {"ServiceAccount", "Deployment", "Service"}
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "--serve-artifacts" in container["args"][0]
    env = {item["name"]: item for item in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]  # the database password stays in a Secret
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
    assert documents["Service"]["spec"]["type"] == "ClusterIP"
    selector = documents["Service"]["spec"]["selector"]
    assert documents["Deployment"]["spec"]["template"]["metadata"]["labels"].items() >= selector.items()


@pytest.mark.parametrize("missing", ["MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"])
def test_mlflow_server_script_refuses_to_start_without_its_stores(missing):
    env = {
        "PATH": os.environ["PATH"],
        "MLFLOW_BACKEND_STORE_URI": "sqlite:////nonexistent/mlflow.db",
        "MLFLOW_ARTIFACTS_DESTINATION": "/nonexistent/artifacts",
    }
    del env[missing]
    result = subprocess.run(["bash", str(CLUSTER / "mlflow-server.sh")], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr
