"""onnxruntime CPU sessions over a model in memory: the one place that builds them (calibration taps, the
report, the latency check). Models over 2 GB go through a copy with external data."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import onnx

from ferroquant.errors import ModelError
from ferroquant.onnx.external import session_source


def cpu_session(model: onnx.ModelProto, extra_outputs: Sequence[str] = (), optimize: bool = True, threads: int = 0,
                profile_dir: Optional[str] = None, mapped_weights: bool = False,
                mem_pattern: bool = True, spin: bool = True):  # noqa: ANN201 - InferenceSession
    """A CPU session over ``model`` whose outputs also include ``extra_outputs``. ``optimize=False`` runs every
    node as written (graph optimizations off); ``threads`` (0: onnxruntime's choice) intra-op threads;
    ``profile_dir``: onnxruntime's profiler writes there; ``mapped_weights``: for a model over 2 GB, the
    weights stay mapped from the file instead of packed into copies (less memory; kernels may round a float
    differently from the in-memory session); ``mem_pattern``: onnxruntime's memory pattern (off: each tensor
    from the arena as it comes); ``spin``: whether onnxruntime's worker threads busy-wait for work after a run
    (off: they sleep, leaving the cores to whatever runs between two runs)."""
    import onnxruntime as ort

    source, keep = session_source(model, extra_outputs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.enable_mem_pattern = mem_pattern
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "p")
    if keep is not None and mapped_weights:
        so.add_session_config_entry("session.disable_prepacking", "1")
    try:
        sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise ModelError(f"onnxruntime cannot run the model: {e}") from None
    sess._ferroquant_files = keep  # the external data lives as long as the session
    return sess
