"""Specifies rust/ferroquant-core/src/arq.rs."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant.reference.affine import fake_quant, quantize
from ferroquant.reference.qparams import qparams_from_data


def arq(w, axis: Optional[int] = 0, bits: int = 8, symmetric: bool = True):
    """Specifies arq.rs::arq: (scale, zero_point, codes, fake) with min/max qparams per channel of ``axis``
    (per tensor when None)."""
    w = np.asarray(w, np.float32)
    s, z = qparams_from_data(w, axis, bits, symmetric)
    return s, z, quantize(w, s, z, bits, axis), fake_quant(w, s, z, bits, axis)
