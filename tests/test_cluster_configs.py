"""The cluster configs under cluster/ parse and have the fields their consumers require.

* cluster/aws.yaml: validated with Ray's own launcher schema (ray/autoscaler/ray-schema.json), through the
  same prepare_config + validate_config steps `ray up` runs, and its fill-in fields are all present.
* cluster/kuberay/*.yaml: structural schemas for the KubeRay / Kubernetes fields these manifests use
  (field names from KubeRay's ray.io/v1 Go types), closed with additionalProperties: false at the levels
  we write, so a typo'd key fails here rather than being dropped or rejected by the API server.
No network, no cluster: a few hundred milliseconds.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def _ray_pin() -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip().lower().startswith("ray=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("constraints.txt pins no ray version")


# --------------------------------------------------------------------------- AWS cluster launcher


def _aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _validate_like_ray_up(config: dict) -> dict:
    """What `ray up` does before talking to AWS: merge provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_aws_config_passes_ray_schema():
    config = _aws()
    jsonschema.validate(config, _ray_schema())  # the file as written
    prepared = _validate_like_ray_up(config)  # and as `ray up` sees it
    assert prepared["head_node_type"] == "head"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(max_worker=c.pop("max_workers")), id="top-level max_worker"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_spot"].update(
                min_worker=c["available_node_types"]["gpu_spot"].pop("min_workers")
            ),
            id="node-type min_worker",
        ),
        pytest.param(lambda c: c["auth"].update(ssh_privat_key="x"), id="auth typo"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_spot"].update(resources={"GPU": "1"}),
            id="GPU count as string",
        ),
        pytest.param(lambda c: c["available_node_types"]["head"].pop("resources"), id="missing resources"),
    ],
)
def test_aws_config_typo_fails_ray_schema(mutate):
    config = _aws()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _ray_schema())
    with pytest.raises(jsonschema.ValidationError):
        _validate_like_ray_up(config)


# Every value a user must replace, and where it lives. The file marks each with FILL_ME
# (README: `grep -n FILL_ME cluster/aws.yaml`).
AWS_FILL_INS = {
    ("provider", "region"),
    ("provider", "availability_zone"),
    ("auth", "ssh_private_key"),
    *{
        ("available_node_types", node, "node_config", key)
        for node in ("head", "gpu_spot")
        for key in ("ImageId", "KeyName", "SubnetIds", "IamInstanceProfile")
    },
}


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaf_paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaf_paths(value, prefix)
    else:
        yield prefix, tree


def test_aws_config_has_every_fill_in_field():
    config = _aws()
    for path in AWS_FILL_INS:
        value = _get(config, path)
        assert value, f"{'.'.join(path)} is empty"
    # Each placeholder sits at one of the documented fill-in fields, and nowhere else.
    marked = {path for path, value in _leaf_paths(config) if "FILL_ME" in str(value)}
    documented = {p for p in marked if any(p[: len(f)] == f for f in AWS_FILL_INS)}
    assert marked == documented, f"FILL_ME outside the documented fields: {marked - documented}"
    # And every IAM/AMI/key/subnet field still carries its placeholder or a real value of the right shape.
    for node in ("head", "gpu_spot"):
        nc = config["available_node_types"][node]["node_config"]
        assert nc["ImageId"].startswith("ami-")
        assert all(s.startswith("subnet-") for s in nc["SubnetIds"])
        assert nc["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    heads = config["available_node_types"]["head"]["node_config"]
    assert heads["KeyName"] in config["auth"]["ssh_private_key"]  # Ray wants both or neither


def test_aws_config_head_on_demand_gpu_workers_spot_from_zero():
    config = _aws()
    types = config["available_node_types"]
    head, gpu = types[config["head_node_type"]], types["gpu_spot"]
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["resources"].get("GPU", 0) == 0
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert gpu["resources"]["GPU"] == 1
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    assert config["provider"]["cache_stopped_nodes"] is False  # spot nodes cannot be stopped


def test_aws_config_installs_project_with_constraints():
    config = _aws()
    assert "." in config["file_mounts"].values()
    assert ".gitignore" in config["rsync_filter"]  # keeps .venv/ off the nodes
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()
    setup = "\n".join(config["setup_commands"])
    assert "-c ~/doodl-ray/constraints.txt" in setup
    assert "--python 3.11" in setup


# --------------------------------------------------------------------------- KubeRay / Kubernetes

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "additionalProperties": False,
}
_QUANTITY = {"type": ["string", "integer", "number"]}
_RESOURCES = {
    "type": "object",
    "properties": {
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
    },
    "additionalProperties": False,
}
# The corev1.Container fields (a subset, enough for typo detection in what we write).
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "workingDir": {"type": "string"},
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": {}},
                "additionalProperties": False,
            },
        },
        "envFrom": {"type": "array"},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {
                    "containerPort": {"type": "integer"},
                    "name": {"type": "string"},
                    "protocol": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "resources": _RESOURCES,
        "volumeMounts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "mountPath"],
                "properties": {
                    "name": {"type": "string"},
                    "mountPath": {"type": "string"},
                    "readOnly": {"type": "boolean"},
                    "subPath": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "lifecycle": {},
        "livenessProbe": {},
        "readinessProbe": {},
        "startupProbe": {},
        "securityContext": {},
    },
    "additionalProperties": False,
}
# The corev1.PodSpec fields (a subset).
_POD_SPEC = {
    "type": "object",
    "required": ["containers"],
    "properties": {
        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
        "initContainers": {"type": "array", "items": _CONTAINER},
        "volumes": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "minProperties": 2},
        },
        "serviceAccountName": {"type": "string"},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
        "nodeSelector": _STR_MAP,
        "tolerations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["Exists", "Equal"]},
                    "value": {"type": "string"},
                    "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                    "tolerationSeconds": {"type": "integer"},
                },
                "additionalProperties": False,
            },
        },
        "affinity": {"type": "object"},
        "imagePullSecrets": {"type": "array"},
        "priorityClassName": {"type": "string"},
        "securityContext": {"type": "object"},
        "terminationGracePeriodSeconds": {"type": "integer"},
        "topologySpreadConstraints": {"type": "array"},
        "runtimeClassName": {"type": "string"},
    },
    "additionalProperties": False,
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"metadata": {"type": "object"}, "spec": _POD_SPEC},
    "additionalProperties": False,
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}  # strings only
# ray.io/v1 RayClusterSpec / HeadGroupSpec / WorkerGroupSpec (raycluster_types.go).
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object",
            "properties": {
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                "resources": _RESOURCES,
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
                "securityContext": {"type": "object"},
                "version": {"enum": ["v1", "v2"]},
            },
            "additionalProperties": False,
        },
        "headServiceAnnotations": _STR_MAP,
        "gcsFaultToleranceOptions": {"type": "object"},
        "suspend": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "properties": {
                "rayStartParams": _RAY_START_PARAMS,
                "template": _POD_TEMPLATE,
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "headService": {"type": "object"},
                "enableIngress": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                "properties": {
                    "groupName": {"type": "string"},
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 1},
                    "idleTimeoutSeconds": {"type": "integer"},
                    "rayStartParams": _RAY_START_PARAMS,
                    "template": _POD_TEMPLATE,
                    "scaleStrategy": {"type": "object"},
                    "numOfHosts": {"type": "integer"},
                    "suspend": {"type": "boolean"},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


RAY_CLUSTER = _resource("ray.io/v1", "RayCluster", _RAY_CLUSTER_SPEC)
# ray.io/v1 RayJobSpec (rayjob_types.go).
RAY_JOB = _resource(
    "ray.io/v1",
    "RayJob",
    {
        "type": "object",
        "required": ["entrypoint"],
        "properties": {
            "entrypoint": {"type": "string", "minLength": 1},
            "runtimeEnvYAML": {"type": "string"},
            "jobId": {"type": "string"},
            "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
            "shutdownAfterJobFinishes": {"type": "boolean"},
            "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "backoffLimit": {"type": "integer", "minimum": 0},
            "rayClusterSpec": _RAY_CLUSTER_SPEC,
            "clusterSelector": _STR_MAP,
            "submitterPodTemplate": _POD_TEMPLATE,
            "submitterConfig": {"type": "object"},
            "metadata": _STR_MAP,
            "entrypointNumCpus": {"type": "number"},
            "entrypointNumGpus": {"type": "number"},
            "entrypointResources": {"type": "string"},
            "suspend": {"type": "boolean"},
            "managedBy": {"type": "string"},
            "deletionStrategy": {"type": "object"},
        },
        # exactly one way to get a cluster
        "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
        "additionalProperties": False,
    },
)
# batch/v1 CronJobSpec / JobSpec.
CRON_JOB = _resource(
    "batch/v1",
    "CronJob",
    {
        "type": "object",
        "required": ["schedule", "jobTemplate"],
        "properties": {
            "schedule": {"type": "string"},
            "timeZone": {"type": "string"},
            "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
            "startingDeadlineSeconds": {"type": "integer", "minimum": 0},
            "successfulJobsHistoryLimit": {"type": "integer", "minimum": 0},
            "failedJobsHistoryLimit": {"type": "integer", "minimum": 0},
            "suspend": {"type": "boolean"},
            "jobTemplate": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "metadata": {"type": "object"},
                    "spec": {
                        "type": "object",
                        "required": ["template"],
                        "properties": {
                            "backoffLimit": {"type": "integer", "minimum": 0},
                            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                            "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                            "template": {
                                **_POD_TEMPLATE,
                                "properties": {
                                    "metadata": {"type": "object"},
                                    # a Job's pods must not restart Always
                                    "spec": {
                                        **_POD_SPEC,
                                        "required": ["containers", "restartPolicy"],
                                        "properties": {
                                            **_POD_SPEC["properties"],
                                            "restartPolicy": {"enum": ["OnFailure", "Never"]},
                                        },
                                    },
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
)
SERVICE_ACCOUNT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {"apiVersion": {"const": "v1"}, "kind": {"const": "ServiceAccount"}, "metadata": _METADATA},
    "additionalProperties": False,
}
SCHEMAS = {"RayCluster": RAY_CLUSTER, "RayJob": RAY_JOB, "CronJob": CRON_JOB, "ServiceAccount": SERVICE_ACCOUNT}
MANIFESTS = {
    "common.yaml": ["ServiceAccount"],
    "raycluster.yaml": ["RayCluster"],
    "rayjob.yaml": ["RayJob"],
    "cronjob.yaml": ["CronJob"],
}


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d is not None]


def _one(name: str, kind: str) -> dict:
    (doc,) = [d for d in _docs(name) if d.get("kind") == kind]
    return doc


def _cluster_specs() -> list[dict]:
    return [_one("raycluster.yaml", "RayCluster")["spec"], _one("rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"]]


def _check_cluster_spec(spec: dict) -> None:
    """What the schemas cannot say: GPU workers, autoscaling from zero, matching versions."""
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == _ray_pin()
    head_containers = spec["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {p["containerPort"] for p in head_containers[0].get("ports", [])}
    assert {6379, 8265, 10001} <= ports
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]
        worker = group["template"]["spec"]["containers"][0]
        limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) == 1, f"worker group {group['groupName']} has no GPU limit"
        assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"]  # extended resources: equal
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_matches_schema(name):
    docs = _docs(name)
    assert [d["kind"] for d in docs] == MANIFESTS[name]
    for doc in docs:
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])


def test_all_manifests_are_checked():
    assert sorted(p.name for p in KUBERAY.glob("*.yaml")) == sorted(MANIFESTS)


def test_ray_clusters_have_autoscaling_gpu_workers():
    for spec in _cluster_specs():
        _check_cluster_spec(spec)


def test_rayjob_runs_doodl_ray_and_cleans_up():
    spec = _one("rayjob.yaml", "RayJob")["spec"]
    assert spec["entrypoint"].startswith("doodl-ray run ")
    job_file = spec["entrypoint"].split()[2]
    mounts = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(job_file.startswith(m["mountPath"] + "/") for m in mounts), "job spec not mounted on the head"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0


def test_cronjob_submits_yesterday_to_the_standing_cluster():
    spec = _one("cronjob.yaml", "CronJob")["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,\-]+", f) for f in fields)
    assert spec["concurrencyPolicy"] == "Forbid"
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = "\n".join(container.get("command", []) + container.get("args", []))
    assert "doodl-ray backfill" in script and "--submit" in script
    assert '--from "$DAY" --to "$DAY"' in script
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    cluster_name = _one("raycluster.yaml", "RayCluster")["metadata"]["name"]
    assert env["RAY_ADDRESS"] == f"http://{cluster_name}-head-svc:8265"  # KubeRay's head Service name


def test_manifests_share_image_and_service_account():
    images, accounts = set(), set()
    for name in MANIFESTS:
        for doc in _docs(name):
            for path, value in _leaf_paths(doc):
                if path[-1:] == ("image",):
                    images.add(value)
                if path[-1:] == ("serviceAccountName",):
                    accounts.add(value)
    assert len(images) == 1, images
    (image,) = images
    assert image.endswith(":0.1.0")
    assert accounts == {_one("common.yaml", "ServiceAccount")["metadata"]["name"]}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_pin()}-" in dockerfile


@pytest.mark.parametrize(
    "name,kind,mutate",
    [
        ("raycluster.yaml", "RayCluster", lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplica=0)),
        ("raycluster.yaml", "RayCluster", lambda d: d["spec"].update(headGroupSpecs=d["spec"].pop("headGroupSpec"))),
        ("raycluster.yaml", "RayCluster", lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update(port=6379)),
        ("raycluster.yaml", "RayCluster", lambda d: d.update(apiVersion="ray.io/v1alpha")),
        (
            "raycluster.yaml",
            "RayCluster",
            lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"].update(tolerration=[]),
        ),
        ("rayjob.yaml", "RayJob", lambda d: d["spec"].update(shutdownAfterJobFinish=True)),
        ("rayjob.yaml", "RayJob", lambda d: d["spec"].pop("entrypoint")),
        ("rayjob.yaml", "RayJob", lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "x"})),
        ("cronjob.yaml", "CronJob", lambda d: d["spec"].update(schedul=d["spec"].pop("schedule"))),
        (
            "cronjob.yaml",
            "CronJob",
            lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"].update(restartPolicy="Always"),
        ),
    ],
)
def test_kuberay_typo_fails_schema(name, kind, mutate):
    doc = copy.deepcopy(_one(name, kind))
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMAS[kind])


def test_missing_gpu_limit_is_caught():
    spec = copy.deepcopy(_one("raycluster.yaml", "RayCluster")["spec"])
    for key in ("limits", "requests"):
        del spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][key]["nvidia.com/gpu"]
    with pytest.raises((AssertionError, KeyError)):
        _check_cluster_spec(spec)
