"""Review a run in the browser: a paged gallery, item details, blind A/B votes between two runs (stored as
Parquet beside the run, on disk or S3) and the report of those votes (`doodl-ray review`, `review-report`).

| module | job |
|---|---|
| `results.py` | a run's rows read once into pyarrow (shards + open parts, best row per id), scores as columns, images only through recorded keys |
| `gallery.py` | filters, sort and paging with pyarrow |
| `study.py` | the blind A/B study: pairs, each reviewer's order and sides, resumable progress |
| `votes.py` | one Parquet object per vote, appended atomically; read back by concatenation |
| `report.py` | win rates (Wilson 95%), exact sign test, per target/category, reviewer agreement (Cohen's kappa) |
| `app.py` | the Flask app, token check, security headers, the quiet threaded server |"""
