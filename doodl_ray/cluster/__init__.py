"""Running job specs on a Ray cluster: submission through Ray's Job Submission API (`submission`), one job
per date partition for backfills (`partitions`), and per-run metrics and cost exported through Ray's
metrics (`metrics`). The modules are imported by the commands that need them, so `doodl-ray run` never
pays for the Jobs SDK."""
