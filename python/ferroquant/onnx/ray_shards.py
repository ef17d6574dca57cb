"""Sharded calibration on a Ray cluster (the optional ``ray`` extra: ``pip install 'ferroquant[ray]'``).

:func:`calibrate_with_ray` runs one Ray task per shard; each task prepares the model with the same config,
deploy profile and CPU types, observes its shard (:func:`~ferroquant.onnx.shards.calibrate_shard`, no search)
and returns its state as the JSON document ``ferroquant calibrate`` would write. The documents are merged on
the caller's side with :func:`~ferroquant.onnx.shards.merge_documents`, the merge of ``ferroquant merge``
(folded in the order of their SHA-256, so the result does not depend on which task finished first): the
merged state equals the one the CLI gives for the same shards, and, on a fixed histogram range (``grids``),
bit-identically one run's qparams. Give it to :func:`~ferroquant.onnx.shards.calibrated_from_state` (then
``table()`` / ``save_model``) or write it with :func:`~ferroquant.onnx.shards.save_state` for
``ferroquant quantize --state``.

Ray is imported when the function is called (a :class:`ConfigError` says how to install it when it is
missing); a cluster that is not running is started by Ray itself (``ray.init()`` first to choose its size).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import onnx

from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.shards import CalibrationState, document_digest, merge_documents
from ferroquant.quant.profiles import DEFAULT_PROFILE

Shard = Any  # a .npy/.npz file or folder (calib_data), an iterable of {input name: array}, a Ray Dataset shard


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("calibration with Ray needs the ray package: pip install 'ferroquant[ray]' (or "
                          "ray==2.60.0); without Ray, run `ferroquant calibrate` per shard and `ferroquant "
                          "merge`") from None
    return ray


def _is_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("ray.data") and hasattr(obj, "iter_batches")


def _feeds(shard: Shard, model: onnx.ModelProto, batch_size: Optional[int], preprocess: Any) -> Any:
    """What :func:`calibrate_shard` iterates, in the task: a path read with ``calib_data`` (lazily), the
    batches of a Ray Dataset shard, or the shard as it is."""
    if isinstance(shard, (str, os.PathLike)):
        from ferroquant.calib_data import load_calibration_data, model_inputs

        return load_calibration_data(shard, model_inputs(model), batch_size, preprocess)
    if _is_dataset(shard):
        return lambda: shard.iter_batches(batch_size=batch_size or 8, batch_format="numpy")
    return shard


def _observe(model: Any, config: Dict[str, Any], shard: Shard, options: Dict[str, Any]) -> Dict[str, Any]:
    """One Ray task: the state document of ``shard`` (what ``ferroquant calibrate`` writes)."""
    from ferroquant.onnx.api import calibration_setup
    from ferroquant.onnx.shards import _parse, calibrate_shard

    if isinstance(model, bytes):
        model = onnx.load_model_from_string(model)
    cm, _ = calibration_setup(config, model, options["ifmr_memory_budget"], options["profile"], options["cpu_types"])
    grids = _parse(options["grids"], "the range state") if options["grids"] is not None else None
    feeds = _feeds(shard, cm.model, options["batch_size"], options["preprocess"])
    return calibrate_shard(cm, feeds, options["max_batches"], grids).to_json()


def _split(ray: Any, shards: Union[Sequence[Shard], Any], num_shards: Optional[int]) -> List[Shard]:
    if _is_dataset(shards):
        n = num_shards if num_shards is not None else max(1, int(ray.cluster_resources().get("CPU", 1)))
        rows = shards.count()
        if n < 1 or rows < 1:
            raise DataError(f"cannot split a Ray Dataset of {rows} rows into {n} shards")
        n = min(n, rows)  # contiguous rows, none dropped (split(n) may leave a shard empty)
        return list(shards.split_at_indices([rows * k // n for k in range(1, n)]))
    if isinstance(shards, (str, os.PathLike)) or not isinstance(shards, Sequence):
        raise DataError("shards must be a list of shards (each a path, or batches of {input name: array}) or a "
                        f"Ray Dataset, got {type(shards).__name__}")
    if not shards:
        raise DataError("no shard to calibrate")
    return list(shards)


def calibrate_with_ray(model: Union[str, Path, onnx.ModelProto], config: Union[str, Path, Mapping, Any],
                       shards: Union[Sequence[Shard], Any], *, profile: str = DEFAULT_PROFILE,
                       cpu_types: Optional[str] = None, batch_size: Optional[int] = None,
                       preprocess: Any = None, max_batches: Optional[int] = None,
                       grids: Optional[CalibrationState] = None, num_shards: Optional[int] = None,
                       ifmr_memory_budget: Optional[int] = None, num_cpus: float = 1) -> CalibrationState:
    """Observe every shard in a Ray task of its own and return the merged :class:`CalibrationState`.

    ``model``: an ONNX file (each worker reads the path: it must see the same file system) or a ModelProto
    (sent to the workers once; a model over 2 GB goes by path). ``config``: a :class:`~ferroquant.config.QuantConfig`, its JSON file or dict.
    ``shards``: a list, one task per item (a calibration file or folder, read with ``batch_size`` and
    ``preprocess`` as ``--calib`` is; or an iterable of ``{input name: array}`` / arrays), or a Ray Dataset
    (columns named after the model's inputs) split into ``num_shards`` (default: the cluster's CPUs).
    ``max_batches``: at most this many batches per shard. ``grids``: start every histogram on this state's ranges
    (``--range-from``). ``num_cpus``: Ray CPUs each task reserves.
    """
    from ferroquant.config import load_config
    from ferroquant.quant.calibrators import IFMR_MODEL_BUDGET

    ray = _ray()
    cfg = load_config(config).to_json()
    parts = _split(ray, shards, num_shards)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not Path(model).is_file():
        raise DataError(f"model not found: {model}")
    options = {"profile": profile, "cpu_types": cpu_types, "batch_size": batch_size, "preprocess": preprocess,
               "max_batches": max_batches, "grids": grids.to_json() if grids is not None else None,
               "ifmr_memory_budget": ifmr_memory_budget or IFMR_MODEL_BUDGET}
    task = ray.remote(num_cpus=num_cpus, max_retries=0)(_observe)
    shared = [ray.put(model if isinstance(model, bytes) else str(model)), ray.put(cfg)]  # sent once
    refs = [task.remote(*shared, part, options) for part in parts]
    docs = ray.get(refs)
    return merge_documents([(document_digest(doc), doc, f"shard {k}") for k, doc in enumerate(docs)])


__all__ = ["calibrate_with_ray"]
