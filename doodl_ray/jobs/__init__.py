"""The job system: a YAML spec, a driver that owns a pool of Ray actors, and a ledger in object storage.

`run_job(load_spec("job.yaml"))` generates one result row per input row under the spec's output URI,
resuming whatever an earlier run of the same spec left done (see ARCHITECTURE.md, "Job system")."""

from doodl_ray.jobs.driver import RunSummary, run_job
from doodl_ray.jobs.spec import JobSpec, load_spec

__all__ = ["JobSpec", "RunSummary", "load_spec", "run_job"]
