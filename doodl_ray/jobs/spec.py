"""The job spec: one YAML file that says what to generate, how, where to, and with which resources.

Validated with pydantic before anything starts (unknown keys are errors, so a typo never silently falls
back to a default). `result_hash` fingerprints only the fields that decide *what* the results are, so a
rerun may change resources, retries or timeouts and still resume the same output."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from doodl_ray.config import StrictModel, validation_problems
from doodl_ray.methods.registry import MethodConfig
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.spec import GuidanceConfig
from doodl_ray.jobs.ladder import BudgetConfig, LadderConfig, check_ladder

SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
"""Names that are safe as one storage path segment: no '/', no leading '.', so never '..'."""


class ColumnMap(StrictModel):
    """Which input column holds each item field; None: the input has no such column."""

    id: Optional[str] = Field(
        None, description="Item id (string or integer); None: a stable hash of the row's mapped fields."
    )
    prompt: Optional[str] = Field(None, description="Text prompt (text-conditioned models).")
    target: Optional[str] = Field(None, description="Guidance target: class index or name, or text.")
    reference: Optional[str] = Field(
        None, description="Reference image URI, used as the guidance target when there is no target column."
    )
    class_label: Optional[str] = Field(None, description="Class label (integer) for class-conditional pixel models.")
    seed: Optional[str] = Field(None, description="Per-item seed (integer); None: derived from the spec seed and id.")


class FilterCondition(StrictModel):
    """One row condition; a row is kept when every condition holds. Exactly one operator per condition."""

    column: str = Field(description="Input column the condition tests.")
    eq: Any = Field(None, description="Keep rows equal to this value.")
    ne: Any = Field(None, description="Keep rows not equal to this value.")
    isin: Optional[list[Any]] = Field(None, alias="in", description="Keep rows whose value is in this list.")
    lt: Any = Field(None, description="Keep rows less than this value.")
    le: Any = Field(None, description="Keep rows less than or equal to this value.")
    gt: Any = Field(None, description="Keep rows greater than this value.")
    ge: Any = Field(None, description="Keep rows greater than or equal to this value.")

    @model_validator(mode="after")
    def _one_operator(self) -> "FilterCondition":
        if len(self.operators()) != 1:
            raise ValueError(f"filter on {self.column!r} needs exactly one of eq, ne, in, lt, le, gt, ge")
        return self

    def operators(self) -> dict[str, Any]:
        """The operators set on this condition (name -> value)."""
        return {k: v for k, v in self.__dict__.items() if k != "column" and v is not None}


class InputConfig(StrictModel):
    """Where the rows come from."""

    uri: str = Field(description="A Parquet file, a folder of them, a glob, or an s3:// prefix.")
    columns: ColumnMap = Field(ColumnMap(), description="Column mapping for the item fields.")
    filter: list[FilterCondition] = Field([], description="Row conditions applied before `limit`.")
    limit: Optional[int] = Field(None, ge=1, description="Keep only the first N rows (in file and row order).")


class OutputConfig(StrictModel):
    """Where the results go: results/ (per-shard Parquet and done markers), manifest.json, and the images
    in the chosen format (jobs.formats)."""

    uri: str = Field(description="Output prefix: a local folder or an s3:// prefix.")
    shard_size: int = Field(1000, ge=1, description="Input rows per shard (one results file and done marker each).")
    format: str = Field(
        "files", pattern=r"^([\w.]+:)?[\w-]+$",
        description="files: a PNG per image under images/; webdataset: a tar per shard under data/ "
        "(<key>.png, <key>.initial.png, <key>.json, <key>.txt); parquet: a Parquet file per shard under data/ "
        "with the images embedded as Hugging Face datasets' Image feature; or package.module:name, a format that "
        "module registers (jobs.formats). Not part of the result hash: `doodl-ray export` converts a finished run.",
    )


class StorageConfig(StrictModel):
    """S3 access for every URI in the spec. Unset fields come from the standard AWS chain (environment,
    profile, instance role); secrets are never logged or written to the manifest."""

    endpoint_url: Optional[str] = Field(None, description="S3-compatible endpoint (MinIO, Ceph, moto, ...).")
    region: Optional[str] = Field(None, description="AWS region name.")
    profile: Optional[str] = Field(None, description="Named profile from the AWS config files.")
    access_key_id: Optional[SecretStr] = Field(None, description="Access key id (prefer the AWS chain).")
    secret_access_key: Optional[SecretStr] = Field(None, description="Secret access key (prefer the AWS chain).")
    session_token: Optional[SecretStr] = Field(None, description="Session token for temporary credentials.")
    anon: bool = Field(False, description="Unsigned requests (public buckets).")
    options: dict[str, Any] = Field({}, description="Extra fsspec/s3fs options, e.g. {retries: 1, config_kwargs: {...}}.")

    def fsspec_options(self, uri: str) -> dict[str, Any]:
        """Keyword arguments for fsspec.url_to_fs(uri); empty for local paths."""
        if not uri.startswith(("s3://", "s3a://")):
            return {}
        opts: dict[str, Any] = dict(self.options)
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region:
            opts.setdefault("client_kwargs", {})["region_name"] = self.region
        if self.profile:
            opts["profile"] = self.profile
        for field, key in (("access_key_id", "key"), ("secret_access_key", "secret"), ("session_token", "token")):
            value = getattr(self, field)
            if value is not None:
                opts[key] = value.get_secret_value()
        if self.anon:
            opts["anon"] = True
        return opts


class ResourcesConfig(StrictModel):
    """The actor pool."""

    actors: int = Field(1, ge=1, description="Worker actors (each loads the models once).")
    gpus_per_actor: float = Field(1.0, ge=0, description="GPUs reserved per actor (0: CPU workers).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor (also its torch threads on CPU).")
    batch_size: int = Field(1, ge=1, description="Items per engine call.")
    micro_batch: Optional[int] = Field(
        None, ge=1, description="Most rows (items x particles or candidates) per network call in the particle and "
        "search methods (particles, das, lookahead, search-refine), a step's gradient taken a slice at a time: what a "
        "call holds stops growing with the particle count. Results change only by the rounding of batched kernels. "
        "None: all of a batch's particles at once (search: 64).",
    )
    inflight_per_actor: int = Field(
        2, ge=1, description="Batches queued on each actor at once: 2 hides the dispatch round trip."
    )
    gpu_hourly_price: Optional[float] = Field(
        None, ge=0, description="Price of one GPU hour in USD (e.g. 1.01 for an on-demand g5.xlarge), for the "
        "run's cost estimate in the manifest, the summary and the metrics; None: no estimate.",
    )


class RetryConfig(StrictModel):
    """Retries of transient failures, for items and for storage operations.
    Delay before attempt k+1: min(max_delay, base_delay * 2**(k-1)), times a random factor in [1 - jitter, 1]."""

    attempts: int = Field(3, ge=1, description="Tries per item before it is recorded as failed.")
    base_delay: float = Field(1.0, ge=0, description="Seconds before the first retry.")
    max_delay: float = Field(60.0, ge=0, description="Cap on the delay between tries.")
    jitter: float = Field(0.5, ge=0, le=1, description="Fraction of each delay that is randomized.")


class TimeoutConfig(StrictModel):
    """Time budgets; an item over budget is a transient failure and its actor is replaced."""

    item_seconds: Optional[float] = Field(900.0, gt=0, description="Per item: a batch gets batch size times this.")
    startup_seconds: float = Field(900.0, gt=0, description="For an actor to load its models and report ready.")
    no_capacity_seconds: float = Field(
        3600.0, gt=0, description="An actor that cannot be (re)started is retried with backoff while the others "
        "work on; the run stops (a rerun resumes) only when no actor has been able to run for this long.",
    )
    head_seconds: Optional[float] = Field(
        None, gt=0, description="How long the Ray cluster's head may not answer before the run stops (a rerun "
        "resumes); None: a margin before Ray itself would end the driver (its gcs_rpc_server_reconnect_timeout_s).",
    )


class ProcessorConfig(StrictModel):
    """What each worker runs per batch. `engine` is real work; `noop` measures the orchestration alone."""

    name: str = Field(
        "engine", description="engine, noop, or 'package.module:factory' (factory(spec, device, storage_options))."
    )
    options: dict[str, Any] = Field({}, description="Processor options, e.g. noop: {seconds: 0.1, size: 8}.")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ("engine", "noop") and not re.match(r"^[\w.]+:\w+$", value):
            raise ValueError("must be engine, noop or 'package.module:factory'")
        return value


class JobSpec(StrictModel):
    """A DOODL generation job."""

    run_id: str = Field(description="Names this run (manifest, actor names); letters, digits, '.', '_', '-'.")
    input: InputConfig
    model: str = Field(description="Diffusion model: local folder, hub id, or s3:// folder.")
    guidance: Optional[GuidanceConfig] = Field(None, description="Guidance model; None: unguided.")
    evaluation: Optional[GuidanceConfig] = Field(
        None, description="Independent model that scores each result before and after (never guides); "
        "its scores land in the results' `scores` column as eval/* and eval_initial/*.",
    )
    method: Union[MethodConfig, LadderConfig] = Field(
        MethodConfig(), description="Generation method and its parameters, or an escalation ladder of them "
        "(`ladder` and `acceptance`: jobs.ladder).")
    budget: BudgetConfig = Field(BudgetConfig(), description="The whole job's compute (with a ladder).")
    dtype: Optional[Literal["float32", "float16", "bfloat16"]] = Field(
        None, description="Model dtype; None: the engine's default for the device."
    )
    seed: int = Field(0, description="Run seed: item seeds are a stable hash of (seed, item id).")
    output: OutputConfig
    storage: StorageConfig = StorageConfig()
    resources: ResourcesConfig = ResourcesConfig()
    retries: RetryConfig = RetryConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    processor: ProcessorConfig = ProcessorConfig()

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError("must be 1-128 of letters, digits, '.', '_', '-', not starting with '.' or '-'")
        return value

    @field_validator("method", mode="wrap")
    @classmethod
    def _method_or_ladder(cls, value: Any, handler: Any) -> Any:
        """A `method` block with rungs is a ladder, any other one method: each is checked by its own model
        alone, so a mistake is reported at its own field."""
        if isinstance(value, (MethodConfig, LadderConfig)):
            return handler(value)
        return (LadderConfig if isinstance(value, dict) and "ladder" in value else MethodConfig).model_validate(value)

    @model_validator(mode="after")
    def _ladder_rules(self) -> "JobSpec":
        check_ladder(self.method, self.budget, self.guidance.type if self.guidance is not None else None)
        return self

    @property
    def rungs(self) -> list[MethodConfig]:
        """The method settings items run, in order: a ladder's rungs, or the one method."""
        return list(self.method.ladder) if isinstance(self.method, LadderConfig) else [self.method]

    def result_hash(self) -> str:
        """Fingerprint of the fields that decide the results; resume requires it to match."""
        data = self.model_dump(mode="json", include={"input", "model", "guidance", "evaluation", "method", "dtype", "seed", "processor"})
        data["shard_size"] = self.output.shard_size
        if self.budget.total_unet_evals is not None:  # which items escalate (absent: the hashes of earlier releases)
            data["budget"] = self.budget.model_dump(mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def public_dump(self) -> dict[str, Any]:
        """The spec as plain data with secrets masked, for the manifest and logs."""
        return self.model_dump(mode="json", by_alias=True)  # SecretStr dumps as '**********'


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML: numbers, booleans, lists) to nested dicts."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set {override!r}: expected key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidInput(f"--set {override!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def parse_spec(data: Any, source: str = "job spec") -> JobSpec:
    """Validate plain data as a JobSpec; errors become one InvalidInput that lists every bad field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: expected a mapping at the top level")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {validation_problems(exc, '(top)')}") from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML job spec, apply --set overrides, validate."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read job spec {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return parse_spec(data, str(path))
