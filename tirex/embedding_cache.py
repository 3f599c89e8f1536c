"""An on-disk cache of embeddings for repeated experiments: safe ``.npz`` files, never pickle.

One file per (model weights, embedding options) holds the vector of every series (one channel of a case)
embedded so far, keyed by a SHA-256 of its values. Cross-validation folds, repeated fits and other subsets
of the same cases then embed each series once. Files are replaced atomically, so a crash never leaves a torn file; two
processes writing the same file at once can lose each other's new entries (they are recomputed), never
corrupt it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .embedding import RECIPE_VERSION, EmbeddingOptions


def model_fingerprint(model) -> str:
    """SHA-256 of a model's configuration and weights (hex). Cached on the model until a weight changes."""
    params = list(model.state_dict().items())
    version = tuple((name, t._version, t.data_ptr()) for name, t in params)
    cached = getattr(model, "_tirex_fingerprint", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in params:
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    model._tirex_fingerprint = (version, digest)
    return digest


def series_key(series: np.ndarray) -> bytes:
    """SHA-256 (hex, as bytes) of a 1-D series' float64 values (NaN included)."""
    return hashlib.sha256(np.ascontiguousarray(series, dtype=np.float64).tobytes()).hexdigest().encode()


def cache_file(cache_dir, model, options: EmbeddingOptions) -> Path:
    """The cache file for ``model`` and ``options`` inside ``cache_dir``."""
    setup = json.dumps({"recipe": RECIPE_VERSION, **asdict(options)}, sort_keys=True)
    tag = hashlib.sha256(setup.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"tirex-embeddings-{model_fingerprint(model)[:24]}-{tag}.npz"


def _read(path: Path) -> dict[bytes, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, vectors = data["keys"], data["vectors"]
    except (OSError, ValueError, KeyError):  # unreadable or foreign: start afresh (it is only a cache)
        return {}
    return {bytes(k): v for k, v in zip(keys, vectors)}


def _write(path: Path, store: dict[bytes, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.npz")
    os.close(fd)
    try:
        keys = np.array(list(store), dtype="S64")
        np.savez(tmp, keys=keys, vectors=np.stack(list(store.values())))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_embeddings(
    cache_dir,
    model,
    options: EmbeddingOptions,
    series: list[np.ndarray],
    compute: Callable[[list[np.ndarray]], np.ndarray],
) -> np.ndarray:
    """Vectors of the 1-D ``series``, computing with ``compute`` (list of series -> (n, size)) only those
    not yet in the cache, then saving them. Returns (len(series), size)."""
    path = cache_file(cache_dir, model, options)
    store = _read(path)
    keys = [series_key(s) for s in series]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in store}.values())
    if todo:
        for i, vector in zip(todo, compute([series[i] for i in todo])):
            store[keys[i]] = vector
        _write(path, store)
    return np.stack([store[k] for k in keys])
