"""The cluster configs under cluster/ parse and have the fields their consumers require.

* cluster/aws.yaml: validated with Ray's own launcher schema (ray/autoscaler/ray-schema.json), through the
  same prepare_config + validate_config steps `ray up` runs, and its fill-in fields are all present.
* cluster/kuberay/*.yaml: structural schemas for the KubeRay / Kubernetes fields these manifests use
  (field names from KubeRay's ray.io/v1 Go types), closed with additionalProperties: false at the levels
  we write, so a typo'd key fails here rather than being dropped or rejected by the API server; and the
  RayJob rules KubeRay's operator enforces beyond its schema (ValidateRayJobSpec: e.g. no backoffLimit
  with a clusterSelector), which a schema cannot express.
* Token authentication: every client of a Ray cluster the configs start (Ray containers, autoscalers, job
  submitters, the CronJob; AWS heads and workers) runs with RAY_AUTH_MODE=token and the cluster's token,
  and nothing turns authentication off.
* A lost head: the standing cluster keeps its state in the Redis of redis.yaml (GCS fault tolerance, under
  KubeRay's rules for it), and a RayJob retries on a fresh cluster with a driver that resumes.
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


def test_aws_config_distributes_the_token_and_starts_ray_with_it():
    config = _aws()
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # head, then workers from it
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), key


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
_KEY_REF = {"type": "object", "required": ["name", "key"],
            "properties": {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
            "additionalProperties": False}
# corev1.EnvVar: a value, or one source for it.
_ENV = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "value": {"type": "string"},
            "valueFrom": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {"secretKeyRef": _KEY_REF, "configMapKeyRef": _KEY_REF, "fieldRef": {"type": "object"},
                               "resourceFieldRef": {"type": "object"}},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
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
        "env": _ENV,
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
# A batch/v1 Job's pods (a CronJob's, a RayJob's submitter): they must not restart Always.
_JOB_POD_TEMPLATE = {
    **_POD_TEMPLATE,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            **_POD_SPEC,
            "required": ["containers", "restartPolicy"],
            "properties": {**_POD_SPEC["properties"], "restartPolicy": {"enum": ["OnFailure", "Never"]}},
        },
    },
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}  # strings only
# ray.io/v1 GcsFaultToleranceOptions / RedisCredential (KubeRay >= 1.3).
_REDIS_CREDENTIAL = {"type": "object", "minProperties": 1, "maxProperties": 1,
                     "properties": {"value": {"type": "string"},
                                    "valueFrom": {"type": "object", "properties": {"secretKeyRef": _KEY_REF},
                                                  "additionalProperties": False}},
                     "additionalProperties": False}
_GCS_FAULT_TOLERANCE = {
    "type": "object",
    "properties": {"backend": {"enum": ["redis", "rocksdb"]}, "redisAddress": {"type": "string", "minLength": 1},
                   "redisPassword": _REDIS_CREDENTIAL, "redisUsername": _REDIS_CREDENTIAL,
                   "externalStorageNamespace": {"type": "string"}, "storage": {"type": "object"}},
    "additionalProperties": False,
}
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
                "env": _ENV,
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
                "securityContext": {"type": "object"},
                "version": {"enum": ["v1", "v2"]},
            },
            "additionalProperties": False,
        },
        "headServiceAnnotations": _STR_MAP,
        "gcsFaultToleranceOptions": _GCS_FAULT_TOLERANCE,
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
            "submitterPodTemplate": _JOB_POD_TEMPLATE,
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
                            "template": _JOB_POD_TEMPLATE,
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
_LABELS = {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": _STR_MAP},
           "additionalProperties": False}
PERSISTENT_VOLUME_CLAIM = _resource("v1", "PersistentVolumeClaim", {
    "type": "object",
    "required": ["accessModes", "resources"],
    "properties": {"accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany",
                                                                       "ReadWriteMany", "ReadWriteOncePod"]}},
                   "resources": _RESOURCES, "storageClassName": {"type": "string"}},
    "additionalProperties": False,
})
DEPLOYMENT = _resource("apps/v1", "Deployment", {
    "type": "object",
    "required": ["selector", "template"],
    "properties": {"replicas": {"type": "integer", "minimum": 0}, "selector": _LABELS, "template": _POD_TEMPLATE,
                   "strategy": {"type": "object", "properties": {"type": {"enum": ["Recreate", "RollingUpdate"]}},
                                "additionalProperties": False}},
    "additionalProperties": False,
})
SERVICE = _resource("v1", "Service", {
    "type": "object",
    "required": ["ports"],
    "properties": {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "selector": _STR_MAP,
                   "ports": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "required": ["port"],
                       "properties": {"name": {"type": "string"}, "port": {"type": "integer"},
                                      "targetPort": {"type": ["integer", "string"]}, "protocol": {"type": "string"}},
                       "additionalProperties": False}}},
    "additionalProperties": False,
})
SCHEMAS = {"RayCluster": RAY_CLUSTER, "RayJob": RAY_JOB, "CronJob": CRON_JOB, "ServiceAccount": SERVICE_ACCOUNT,
           "PersistentVolumeClaim": PERSISTENT_VOLUME_CLAIM, "Deployment": DEPLOYMENT, "Service": SERVICE}
# KubeRay's own limit on RayJob names (MaxRayJobNameLength), which must also be DNS-1035 labels.
RAY_JOB["properties"]["metadata"] = {
    **_METADATA,
    "properties": {**_METADATA["properties"],
                   "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 47}},
}
MANIFESTS = {
    "common.yaml": ["ServiceAccount"],
    "redis.yaml": ["PersistentVolumeClaim", "Deployment", "Service"],
    "raycluster.yaml": ["RayCluster"],
    "rayjob.yaml": ["RayJob"],
    "rayjob-selector.yaml": ["RayJob"],
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


def _head_mounts(cluster_spec: dict) -> list[dict]:
    return cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]


def test_rayjob_runs_doodl_ray_and_cleans_up():
    spec = _one("rayjob.yaml", "RayJob")["spec"]
    assert spec["entrypoint"].startswith("doodl-ray run ")
    job_file = spec["entrypoint"].split()[2]
    mounts = _head_mounts(spec["rayClusterSpec"])
    assert any(job_file.startswith(m["mountPath"] + "/") for m in mounts), "job spec not mounted on the head"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0


def test_rayjob_selector_runs_doodl_ray_on_the_standing_cluster():
    spec = _one("rayjob-selector.yaml", "RayJob")["spec"]
    standing = _one("raycluster.yaml", "RayCluster")
    assert spec["clusterSelector"] == {"ray.io/cluster": standing["metadata"]["name"]}
    assert spec["entrypoint"] == _one("rayjob.yaml", "RayJob")["spec"]["entrypoint"]
    job_file = spec["entrypoint"].split()[2]
    assert any(job_file.startswith(m["mountPath"] + "/") for m in _head_mounts(standing["spec"])), \
        "job spec not mounted on the standing cluster's head"


# --------------------------------------------------------------------------- KubeRay's RayJob rules

def kuberay_rayjob_problems(spec: dict) -> list[str]:
    """What KubeRay's operator refuses in a RayJob spec that a structural schema accepts: the rules of its
    ValidateRayJobSpec (ray-operator/controllers/ray/utils/validation.go) for the fields these manifests
    use, with KubeRay's own messages; plus one of ours, for a field KubeRay silently ignores."""
    problems = []
    selector, shutdown = bool(spec.get("clusterSelector")), spec.get("shutdownAfterJobFinishes", False)
    mode, backoff = spec.get("submissionMode", "K8sJobMode"), spec.get("backoffLimit", 0)
    if spec.get("suspend") and not shutdown:
        problems.append("a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not shutdown:
        problems.append("a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished")
    if selector:
        if spec.get("suspend"):
            problems.append("the ClusterSelector mode doesn't support the suspend operation")
        if not spec["clusterSelector"].get("ray.io/cluster"):
            problems.append("cluster name in ClusterSelector should not be empty")
        if mode == "SidecarMode":
            problems.append("ClusterSelector is not supported in SidecarMode")
        if backoff > 0:
            problems.append("BackoffLimit is incompatible with ClusterSelector mode")
        if shutdown:  # ours: KubeRay accepts it and never deletes a selected cluster
            problems.append("shutdownAfterJobFinishes is ignored with a clusterSelector")
    elif "rayClusterSpec" not in spec:
        problems.append("one of RayClusterSpec or ClusterSelector must be set")
    if mode == "InteractiveMode" and backoff > 0:
        problems.append("BackoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode" and "submitterPodTemplate" in spec:
        problems.append("Currently, SidecarMode doesn't support SubmitterPodTemplate")
    return problems


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayjob-selector.yaml"])
def test_rayjobs_pass_kuberays_rules(name):
    assert kuberay_rayjob_problems(_one(name, "RayJob")["spec"]) == []


def test_swapping_in_a_selector_alone_is_what_kuberay_rejects():
    """rayjob.yaml's old advice: replace rayClusterSpec with clusterSelector, keep the rest."""
    spec = copy.deepcopy(_one("rayjob.yaml", "RayJob")["spec"])
    del spec["rayClusterSpec"]
    spec["clusterSelector"] = {"ray.io/cluster": "doodl-ray"}
    jsonschema.validate({**_one("rayjob.yaml", "RayJob"), "spec": spec}, RAY_JOB)  # the schema cannot tell
    problems = kuberay_rayjob_problems(spec)
    assert "BackoffLimit is incompatible with ClusterSelector mode" in problems
    for field in ("backoffLimit", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"):
        del spec[field]
    assert kuberay_rayjob_problems(spec) == []  # what rayjob-selector.yaml ships


@pytest.mark.parametrize("change,problem", [
    ({"backoffLimit": 1}, "BackoffLimit is incompatible with ClusterSelector mode"),
    ({"submissionMode": "SidecarMode"}, "ClusterSelector is not supported in SidecarMode"),
    ({"clusterSelector": {"ray.io/cluster": ""}}, "cluster name in ClusterSelector should not be empty"),
    ({"suspend": True}, "the ClusterSelector mode doesn't support the suspend operation"),
    ({"ttlSecondsAfterFinished": 60}, "cannot have TTLSecondsAfterFinished"),
])
def test_rayjob_selector_rule_breaks_are_caught(change, problem):
    spec = {**copy.deepcopy(_one("rayjob-selector.yaml", "RayJob")["spec"]), **change}
    assert any(problem in p for p in kuberay_rayjob_problems(spec))


# --------------------------------------------------------------------------- a lost head

FT_ANNOTATION, STORAGE_NAMESPACE_ANNOTATION = "ray.io/ft-enabled", "ray.io/external-storage-namespace"


def kuberay_gcs_ft_problems(spec: dict, annotations: dict) -> list[str]:
    """What KubeRay's operator refuses in a RayClusterSpec's GCS fault tolerance settings that a structural
    schema accepts: the rules of its ValidateRayClusterSpec (ray-operator/controllers/ray/utils/validation.go),
    with KubeRay's own messages."""
    problems = []
    options = spec.get("gcsFaultToleranceOptions")
    head = spec["headGroupSpec"]
    env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
    enabled = options is not None or annotations.get(FT_ANNOTATION) == "true"
    if annotations.get(FT_ANNOTATION) and options is not None:
        problems.append(f"{FT_ANNOTATION} annotation and GcsFaultToleranceOptions are both set")
    if not enabled and "RAY_REDIS_ADDRESS" in env:
        problems.append("RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance, "
                        "but GcsFaultToleranceOptions is not set")
    if options is not None:
        if head["rayStartParams"].get("redis-password"):
            problems.append("cannot set `redis-password` in rayStartParams when GcsFaultToleranceOptions is enabled")
        if "REDIS_PASSWORD" in env:
            problems.append("cannot set `REDIS_PASSWORD` env var in head Pod when GcsFaultToleranceOptions is enabled")
        if "RAY_REDIS_ADDRESS" in env:
            problems.append("cannot set `RAY_REDIS_ADDRESS` env var in head Pod when GcsFaultToleranceOptions is "
                            "enabled")
        if annotations.get(STORAGE_NAMESPACE_ANNOTATION):
            problems.append(f"cannot set `{STORAGE_NAMESPACE_ANNOTATION}` annotation when GcsFaultToleranceOptions "
                            "is enabled")
    if head["rayStartParams"].get("redis-username") or "REDIS_USERNAME" in env:
        problems.append("cannot set redis username in rayStartParams or environment variables")
    return problems


def test_ray_clusters_pass_kuberays_gcs_fault_tolerance_rules():
    for doc in (_one("raycluster.yaml", "RayCluster"), _one("rayjob.yaml", "RayJob")):
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert kuberay_gcs_ft_problems(spec, doc["metadata"].get("annotations", {})) == []


@pytest.mark.parametrize("change,problem", [
    (lambda spec, notes: notes.update({FT_ANNOTATION: "true"}), "annotation and GcsFaultToleranceOptions are both set"),
    (lambda spec, notes: spec["headGroupSpec"]["rayStartParams"].update({"redis-password": "x"}),
     "cannot set `redis-password` in rayStartParams"),
    (lambda spec, notes: spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}), "cannot set `RAY_REDIS_ADDRESS` env var"),
    (lambda spec, notes: notes.update({STORAGE_NAMESPACE_ANNOTATION: "x"}), "external-storage-namespace"),
    (lambda spec, notes: spec.pop("gcsFaultToleranceOptions") and spec["headGroupSpec"]["template"]["spec"][
        "containers"][0]["env"].append({"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}),
     "implicitly enables GCS fault tolerance"),
])
def test_gcs_fault_tolerance_rule_breaks_are_caught(change, problem):
    doc = copy.deepcopy(_one("raycluster.yaml", "RayCluster"))
    notes = dict(doc["metadata"].get("annotations", {}))
    change(doc["spec"], notes)
    jsonschema.validate(doc, RAY_CLUSTER)  # the schema cannot tell
    assert any(problem in p for p in kuberay_gcs_ft_problems(doc["spec"], notes))


def test_standing_cluster_keeps_its_state_in_the_redis_of_redis_yaml():
    """A head Pod that dies is replaced without losing the cluster: its state is in redis.yaml's Redis, which
    keeps it on a volume, at the address and with the password the RayCluster names."""
    options = _one("raycluster.yaml", "RayCluster")["spec"]["gcsFaultToleranceOptions"]
    service, deployment = _one("redis.yaml", "Service"), _one("redis.yaml", "Deployment")
    host, port = options["redisAddress"].removeprefix("redis://").split(":")
    assert host == service["metadata"]["name"] and int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    redis = pod["containers"][0]
    secret = next(e["valueFrom"]["secretKeyRef"] for e in redis["env"] if e["name"] == "REDIS_PASSWORD")
    assert options["redisPassword"]["valueFrom"]["secretKeyRef"] == secret
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and '--requirepass "$REDIS_PASSWORD"' in command
    data_dir = command.split("--dir ")[1].split()[0]
    mount = next(m for m in redis["volumeMounts"] if m["mountPath"] == data_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = _one("redis.yaml", "PersistentVolumeClaim")["metadata"]["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    how_to_make_it = "kubectl create secret generic doodl-ray-redis --from-literal=password="
    assert how_to_make_it in (KUBERAY / "redis.yaml").read_text()


def test_a_rayjob_retry_resumes_on_a_fresh_cluster():
    """A RayJob whose head (or whose GPUs) is lost fails with the driver's exit 75; KubeRay retries it on a new
    cluster, and the same `doodl-ray run` resumes from the ledger (no --force)."""
    spec = _one("rayjob.yaml", "RayJob")["spec"]
    assert spec["backoffLimit"] >= 1 and "rayClusterSpec" in spec
    assert spec["entrypoint"].startswith("doodl-ray run ") and "--force" not in spec["entrypoint"]


# --------------------------------------------------------------------------- token authentication

AUTH_SECRET = {"name": "doodl-ray-auth", "key": "auth_token"}


def _auth_env(env: list[dict]) -> dict:
    """RAY_AUTH_MODE's value and where RAY_AUTH_TOKEN comes from, in a container's (or autoscaler's) env."""
    by_name = {e["name"]: e for e in env}
    return {"mode": by_name.get("RAY_AUTH_MODE", {}).get("value"),
            "token": by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")}


def _token_clients() -> dict[str, list]:
    """Everything that talks to a Ray cluster, by where it is: Ray containers, autoscalers, submitters."""
    found: dict[str, list] = {}
    for name in MANIFESTS:
        for doc in _docs(name):
            spec = doc.get("spec", {})
            clusters = [spec] if doc["kind"] == "RayCluster" else [spec.get("rayClusterSpec")]
            for index, cluster in enumerate(c for c in clusters if c):
                groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
                found[f"{name} containers {index}"] = [c for g in groups for c in g["template"]["spec"]["containers"]]
                found[f"{name} autoscaler {index}"] = [cluster["autoscalerOptions"]]
            if doc["kind"] == "RayJob":
                found[f"{name} submitter"] = spec["submitterPodTemplate"]["spec"]["containers"][:1]
            if doc["kind"] == "CronJob":
                found[f"{name} pod"] = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return found


def test_every_ray_client_in_the_manifests_sends_the_secret_token():
    clients = _token_clients()
    assert {"raycluster.yaml containers 0", "raycluster.yaml autoscaler 0", "rayjob.yaml containers 0",
            "rayjob.yaml autoscaler 0", "rayjob.yaml submitter", "rayjob-selector.yaml submitter",
            "cronjob.yaml pod"} == set(clients)
    for where, containers in clients.items():
        for container in containers:
            assert _auth_env(container.get("env", [])) == {"mode": "token", "token": AUTH_SECRET}, where
    how_to_make_it = "kubectl create secret generic doodl-ray-auth --from-literal=auth_token="
    assert how_to_make_it in (KUBERAY / "common.yaml").read_text()


def test_no_manifest_turns_authentication_off():
    for path in [*KUBERAY.glob("*.yaml"), CLUSTER / "aws.yaml", CLUSTER / "Dockerfile"]:
        text = path.read_text()
        assert "RAY_AUTH_MODE=disabled" not in text and not re.search(r"RAY_AUTH_MODE.{0,20}disabled", text), path


def test_a_worker_without_the_token_is_caught():
    clients = _token_clients()["raycluster.yaml containers 0"]
    worker = copy.deepcopy(clients[-1])
    worker["env"] = [e for e in worker["env"] if e["name"] != "RAY_AUTH_TOKEN"]
    assert _auth_env(worker["env"]) != {"mode": "token", "token": AUTH_SECRET}


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
    for name in set(MANIFESTS) - {"redis.yaml"}:  # every Ray container, not Redis's
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
        ("rayjob-selector.yaml", "RayJob", lambda d: d["spec"].update(rayClusterSpec={"headGroupSpec": {}})),
        ("rayjob-selector.yaml", "RayJob", lambda d: d["metadata"].update(name="doodl-ray-job-" + "x" * 40)),
        ("rayjob-selector.yaml", "RayJob",
         lambda d: d["spec"]["submitterPodTemplate"]["spec"].update(restartPolicy="Always")),
        ("rayjob.yaml", "RayJob", lambda d: d["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"][1].update(
            valueFrom={"secretKeyRef": {"name": "doodl-ray-auth"}})),
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
