"""MLflow tracking, by stage: nothing is imported here, so `sal_ray.tracking.store`
(URIs and redaction) loads without MLflow.

- `store`: the one URI resolver and redactor; reaching the store; the client.
- `writes`: params, tags, metrics, run status, in MLflow's batch limits.
- `provenance`: code version, libraries and hardware, as run tags.
- `outbox`: writes that wait out an outage and are never sent twice.
- `sink`: `MLflowSink`, the trainer callback recording one run through an outbox.
- `usage`: per-area usage as a per-layer summary plus the `area_usage.json` matrix.
- `cost`: a run's wall, CPU and GPU seconds and peak memory; MLflow's system metrics.
- `ui_link`: the MLflow UI link (a shared view) that opens a sweep on its comparison.
- `weights`: the large-weights rule: past `LOG_MODEL_MAX_BYTES` a model is logged
  as a reference (path, size, SHA-256), not uploaded.
"""
