"""The optional extras (``onnx``, ``torch``): one clear ImportError naming the ``pip install`` line."""

from __future__ import annotations

import importlib


def require_extra(module: str, extra: str, needed_by: str) -> None:
    """Import ``module`` or raise ImportError telling how to install the ``extra`` that brings it."""
    try:
        importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{needed_by} needs the {module} package: pip install 'ferroquant[{extra}]'") from e
