"""Every check before any actor starts, in one place: what `validate` runs and `run` repeats, so the two
always give the same verdict with the same one-line reason.

In order: the output (it holds no run of another spec or format), the diffusion model (a supported family,
the image shape it decodes to), the guidance, evaluation and acceptance models' static checks, the input (files,
columns, types, filter, ids, targets), a ladder's dataset budget (it pays for every item's first rung), and the
ledger already under the output (it describes this input). Offline
(`validate --offline`), checks that need remote storage or a model hub are skipped and listed instead."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from doodl_ray.errors import DoodlError, InvalidInput
from doodl_ray.fetch import is_remote
from doodl_ray.jobs.formats import output_format
from doodl_ray.jobs.ladder import LadderConfig, check_first_rung
from doodl_ray.jobs.ledger import Ledger, LedgerState, manifest_format
from doodl_ray.jobs.reader import InputPlan, TargetCheck, read_input
from doodl_ray.jobs.spec import JobSpec
from doodl_ray.jobs.storage import Storage


@dataclass
class Preflight:
    """What the checks found: the input plan (None when offline and the input is in remote storage), what the
    output already holds for it (None when there was nothing to read: --force, or offline and remote), and,
    offline, each check skipped for needing remote storage or a model hub, one line each."""

    plan: Optional[InputPlan]
    resume: Optional[LedgerState] = None
    skipped: list[str] = field(default_factory=list)


def preflight(spec: JobSpec, offline: bool = False, force: bool = False, retry_failed: bool = False,
              check_targets: bool = True) -> Preflight:
    """Run every check; raise DoodlError (one line) for the first problem. `force`: the output will be
    cleared, so what it holds is not checked; `retry_failed`: failed rows do not count as done on resume."""
    from botocore.exceptions import NoCredentialsError

    try:
        return _preflight(spec, offline, force, retry_failed, check_targets)
    except NoCredentialsError:
        raise DoodlError("this spec reads S3, and no AWS credentials were found (environment, profile, instance "
                         "role); `validate --offline` runs every check that needs no network") from None


def _preflight(spec: JobSpec, offline: bool, force: bool, retry_failed: bool, check_targets: bool) -> Preflight:
    output_format(spec.output.format)
    remote_output = offline and is_remote(spec.output.uri)
    output = None if force or remote_output else _output(spec)
    check, skipped = target_check(spec, spec.storage.fsspec_options("s3://"), offline) if check_targets else (None, [])
    plan = None
    if offline and is_remote(spec.input.uri):
        skipped.append(f"input {spec.input.uri} (remote storage)")
    else:
        plan = read_input(spec, spec.storage.fsspec_options(spec.input.uri), check)
        if isinstance(spec.method, LadderConfig):
            check_first_rung(spec.method, spec.budget, len(plan.items))
    if remote_output:
        skipped.append(f"output {spec.output.uri} (remote storage)")
    resume = None if output is None or plan is None else output.resume(plan, spec.result_hash(), retry_failed)
    return Preflight(plan, resume, skipped)


def _output(spec: JobSpec) -> Ledger:
    """The output, after checking that it holds no run of another spec or in another format."""
    uri, spec_hash, name = spec.output.uri, spec.result_hash(), spec.output.format
    ledger = Ledger(Storage(uri, spec.storage.fsspec_options(uri), spec.retries), name)
    manifest = ledger.manifest()
    if manifest is not None and manifest.get("spec_hash") != spec_hash:
        raise InvalidInput(f"{uri} holds run {manifest.get('run_id')!r} of a different spec "
                           f"(hash {manifest.get('spec_hash')} vs {spec_hash}); use a new output URI or --force")
    if manifest is not None and manifest_format(manifest) != name:
        raise InvalidInput(f"{uri} holds run {manifest.get('run_id')!r} in the {manifest_format(manifest)} format, "
                           f"not {name}; `doodl-ray export` converts it, or use a new output URI or --force")
    return ledger


def target_check(spec: JobSpec, storage_options: dict[str, Any],
                 offline: bool = False) -> tuple[Optional[TargetCheck], list[str]]:
    """The diffusion model's and the guidance (and evaluation) models' static checks, and their target checks,
    so bad targets are rejected before any actor starts. Every spec gets the static checks (names, files,
    references, the image shape the model decodes to); classifier targets are checked against the labels the
    spec fixes (a list, a bundled set, a local file), else against the model's own, which is loaded here since
    class names and counts need it. Other targets (texts, reference images) are checked by each worker before
    it generates, and a bad one is still recorded as a rejected row. Offline, checks that need remote storage
    or a model hub are skipped, a classifier with such files is not loaded, and the skipped checks are listed.
    Returns the check (None: none to run here) and that list."""
    from doodl_ray.guidance.spec import build_guidance, check_guidance

    shape, skipped = _model_check(spec, storage_options, offline) if spec.processor.name == "engine" else (None, [])
    configs, loadable = [c for c in (spec.guidance, spec.evaluation, _acceptance_model(spec)) if c is not None], []
    for config in configs:
        missed = check_guidance(config, storage_options, shape, offline)
        skipped += missed
        loadable.append(not missed)
    columns = spec.input.columns
    if spec.processor.name != "engine" or (columns.target is None and columns.reference is None):
        return None, skipped
    checks = []
    for config, can_load in zip(configs, loadable):
        if not config.needs_model_to_validate():
            continue
        labels = config.static_labels()
        if labels is not None:
            checks.append(_labels_check(labels))
        elif can_load and not (offline and config.downloads_weights()):
            checks.append(build_guidance(config, "cpu", storage_options, shape).validate_target)
        else:
            skipped.append(f"targets against the classes of {getattr(config, 'model', config.type)} (needs its files)")
    if not checks:
        return None, skipped

    def check(target: Any, prompt: Optional[str]) -> Any:
        for validate in checks:
            validate(target, prompt)
        return target

    return check, skipped


def _model_check(spec: JobSpec, storage_options: dict[str, Any], offline: bool) -> tuple[Any, list[str]]:
    """The diffusion model reference (a supported family) and the (C, H, W) images it decodes to at the
    sampler's size, for the guides' checks; offline, a remote model is not read: shape None, check skipped."""
    from doodl_ray.models.inspect import check_model, image_shape, inspect_model

    skipped = check_model(spec.model, storage_options, offline)
    info = None if skipped else inspect_model(spec.model, storage_options, offline)
    method = spec.method
    if info and isinstance(method, LadderConfig) and method.acceptance.prior is not None \
            and not info.family.startswith("pixel"):
        raise InvalidInput(f"method.acceptance.prior needs a pixel-space model (the image is its latent); "
                           f"{spec.model} is a {info.family} model")
    sampler = spec.rungs[0].sampler
    return (image_shape(info, sampler.height, sampler.width) if info else None), skipped


def _acceptance_model(spec: JobSpec) -> Any:
    """A ladder's acceptance model, checked like the guide (None: none)."""
    return spec.method.acceptance.model if isinstance(spec.method, LadderConfig) else None


def _labels_check(labels: list[str]) -> TargetCheck:
    """A classifier's own target rule (a class index, or a name among its labels) over labels a spec fixes,
    with no model loaded: the classifier below is never called."""
    from torch import nn

    from doodl_ray.guidance.classifier import ClassifierGuidance

    return ClassifierGuidance(nn.Identity(), len(labels), labels=labels).validate_target
