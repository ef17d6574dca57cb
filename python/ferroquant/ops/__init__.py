"""Typed array API over the native kernels: the one door to :mod:`ferroquant._native`.

Every function here has a NumPy twin of the same name and signature in :mod:`ferroquant.reference` that
specifies it (and returns the same types, :mod:`ferroquant.ops.types`); the tests check that the two agree
(integer codes bit for bit). :func:`backend` picks either by name, so code that can run on both (the
calibrators) switches in one place. Float arrays are taken without a copy when they are C-contiguous float32;
float16 and float64 are converted once; any other dtype raises :class:`DTypeError`. Integer parameters are
checked, not truncated or wrapped. The native work runs with the GIL released; clip searches can be
interrupted with Ctrl-C.

- :mod:`.affine`: qparams, quantize, dequantize, fake-quant;
- :mod:`.weights`: ARQ, NUQ;
- :mod:`.histogram`: the streaming histogram, HFMG, percentile, KL;
- :mod:`.ifmr`: IFMR on data or on a histogram;
- :mod:`.qat`: ULQ and LSQ kernels of quantization-aware training;
- :mod:`.metrics`: compare (SQNR, cosine);
- :mod:`.text`: float lists as JSON text (the records);
- :mod:`.output_clip`: the output error of candidate activation grids through a layer (output-aware clips);
- :mod:`.groupwise`: weight-only group-wise RTN, GPTQ (streaming Hessian), AWQ, and SmoothQuant's per-channel
  statistics and balancing search.
"""

from __future__ import annotations

import sys
from types import ModuleType

from ferroquant import _native
from ferroquant._arrays import int_param
from ferroquant.errors import ParameterError
from ferroquant.ops import affine as _affine, groupwise as _groupwise, histogram as _histogram, ifmr as _ifmr
from ferroquant.ops import metrics as _metrics, qat as _qat, types as _types, weights as _weights
from ferroquant.ops import output_clip as _output_clip, text as _text
from ferroquant.ops.affine import *  # noqa: F401,F403 - each submodule's __all__ lists its public names once
from ferroquant.ops.groupwise import *  # noqa: F401,F403
from ferroquant.ops.histogram import *  # noqa: F401,F403
from ferroquant.ops.ifmr import *  # noqa: F401,F403
from ferroquant.ops.metrics import *  # noqa: F401,F403
from ferroquant.ops.output_clip import *  # noqa: F401,F403
from ferroquant.ops.qat import *  # noqa: F401,F403
from ferroquant.ops.text import *  # noqa: F401,F403
from ferroquant.ops.types import *  # noqa: F401,F403
from ferroquant.ops.weights import *  # noqa: F401,F403

BACKENDS = ("native", "reference")


def backend(name: str = "native") -> ModuleType:
    """The kernels by name: ``native`` (this module) or ``reference`` (the NumPy twins: same signatures, same
    result types, slow on purpose)."""
    if name == "native":
        return sys.modules[__name__]
    if name == "reference":
        from ferroquant import reference

        return reference
    raise ParameterError(f"backend must be one of {BACKENDS}, got {name!r}")


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in native kernels (0: one per core). Results do not depend on it."""
    _native.set_num_threads(int_param(n, "n", 0, 1 << 16))


def get_num_threads() -> int:
    return int(_native.get_num_threads())


__all__ = sorted(["BACKENDS", "backend", "get_num_threads", "set_num_threads"]
                 + [n for m in (_affine, _groupwise, _histogram, _ifmr, _metrics, _output_clip, _qat, _text, _types,
                              _weights)
                    for n in m.__all__])
