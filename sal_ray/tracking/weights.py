"""Large weights handled deliberately: a model whose files exceed
`LOG_MODEL_MAX_BYTES` (a sweep's `log_model_max_bytes`) is recorded in MLflow as
a reference (where the checkpoint lies, its size, its SHA-256) instead of being
uploaded into the artifact store; `log_model_max_bytes=None` uploads whatever the
size (the explicit request). Hashing streams the files: nothing is loaded.

The reference goes on the run as tags (`model_logged=reference`,
`model_ref_path`, `model_ref_bytes`, `model_ref_sha256`) and as a small JSON
artifact, `model/reference.json`, listing each file with its own size and hash.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

# Above this the artifact store gets a reference, not the weights: a 1B-parameter
# net is 4.2 GB in float32, which an upload would copy twice more (the outbox's
# staging folder, then the store) for every best-so-far trial.
LOG_MODEL_MAX_BYTES = 256 * 2 ** 20
CHUNK = 8 << 20


def model_files(path: str) -> list[str]:
    """The files that make up a model: `path` itself, or every file under it."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)


def model_bytes(path: str) -> int:
    return sum(os.path.getsize(f) for f in model_files(path))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_reference(path: str) -> dict[str, Any]:
    """{path, bytes, sha256, files, hash_s}: the SHA-256 of a folder is that of its
    files' names and hashes in order, so one file's damage shows in both."""
    t0 = time.perf_counter()
    path = os.path.abspath(path)
    files, top = [], hashlib.sha256()
    for f in model_files(path):
        digest, size = sha256_file(f), os.path.getsize(f)
        rel = os.path.relpath(f, path) if os.path.isdir(path) else os.path.basename(f)
        files.append({"file": rel, "bytes": size, "sha256": digest})
        top.update(f"{rel}\0{digest}\n".encode())
    one = files[0]["sha256"] if len(files) == 1 and os.path.isfile(path) else top.hexdigest()
    return {"path": path, "bytes": sum(x["bytes"] for x in files), "sha256": one,
            "files": files, "hash_s": time.perf_counter() - t0}


def uploads(path: str, max_bytes: int | None) -> bool:
    """Whether the model at `path` goes into the artifact store (else: a reference)."""
    return max_bytes is None or model_bytes(path) <= max_bytes


def reference_tags(ref: dict[str, Any]) -> dict[str, str]:
    return {"model_logged": "reference", "model_ref_path": ref["path"],
            "model_ref_bytes": str(ref["bytes"]), "model_ref_sha256": ref["sha256"]}
