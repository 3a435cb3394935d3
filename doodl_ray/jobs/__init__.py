"""The job system: a YAML spec, a driver that owns a pool of Ray actors, and a ledger in object storage.

`run_job(load_spec("job.yaml"))` generates one result row per input row under the spec's output URI,
resuming whatever an earlier run of the same spec left done (see ARCHITECTURE.md, "Job system")."""

from typing import Any

__all__ = ["JobSpec", "RunSummary", "load_spec", "run_job"]


def __getattr__(name: str) -> Any:
    """Imported on first use: reading a spec or a ledger (status, review, sheet) needs neither Ray nor torch."""
    if name in ("RunSummary", "run_job"):
        from doodl_ray.jobs import driver

        return getattr(driver, name)
    if name in ("JobSpec", "load_spec"):
        from doodl_ray.jobs import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
