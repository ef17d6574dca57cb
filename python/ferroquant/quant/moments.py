"""Input statistics of a layer, streamed during calibration (bounded memory), for the methods that look at a
layer's output rather than one tensor: the mean input *patch* (empirical bias correction: the mean of
``W_q x - W x`` over the data is ``(W_q - W)`` applied to it, zero padding included).

A *patch* is what one output position of a layer multiplies with one output channel's weights, in the weight's
own order: for a Conv with weight ``[C_out, C_in/g, k...]``, the ``C_in/g x prod(k)`` input values of group ``g``
under the kernel (padded with zeros); for Gemm / MatMul, one row of the input. :class:`PatchSpec` describes the
op (framework-neutral: the ONNX and torch front ends build it from a node's attributes or a module's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ferroquant.errors import ShapeError


@dataclass(frozen=True)
class PatchSpec:
    """How a layer reads its input: ``kind`` ``conv`` (``kernel``, ``strides``, ``pads`` as ONNX's
    ``[begin..., end...]``, ``dilations``, ``groups``, ``auto_pad``) or ``matmul`` (rows of the last axis)."""

    kind: str
    kernel: Tuple[int, ...] = ()
    strides: Tuple[int, ...] = ()
    pads: Tuple[int, ...] = ()
    dilations: Tuple[int, ...] = ()
    groups: int = 1
    auto_pad: str = "NOTSET"

    @property
    def taps(self) -> int:
        return int(np.prod(self.kernel)) if self.kind == "conv" else 1

    def patch_size(self, channels: int) -> int:
        """Values in one group's patch for an input of ``channels`` channels."""
        return channels // self.groups * self.taps if self.kind == "conv" else channels

    def _pads(self, spatial: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
        r = len(self.kernel)
        if self.auto_pad in ("NOTSET", ""):
            p = self.pads or (0,) * (2 * r)
            return tuple((int(p[i]), int(p[i + r])) for i in range(r))
        if self.auto_pad == "VALID":
            return ((0, 0),) * r
        out = []
        for n, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            lo = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            out.append((lo, total - lo))
        return tuple(out)

    def windows(self, x: np.ndarray) -> Tuple[np.ndarray, Tuple[int, ...]]:
        """The zero-padded input and the output's spatial shape (conv)."""
        spatial = x.shape[2:]
        pads = self._pads(spatial)
        xp = np.pad(x, ((0, 0), (0, 0)) + pads) if any(a or b for a, b in pads) else x
        out = tuple((xp.shape[2 + i] - (k - 1) * d - 1) // s + 1
                    for i, (k, s, d) in enumerate(zip(self.kernel, self.strides, self.dilations)))
        if any(o < 1 for o in out):
            raise ShapeError(f"input of spatial shape {spatial} is smaller than the kernel {self.kernel}")
        return xp, out

    def tap_slices(self, xp: np.ndarray, out: Tuple[int, ...]):  # noqa: ANN201 - iterator of (offset, view)
        """For each kernel offset (in the weight's order), the strided view of ``xp`` it reads:
        ``[N, C, *out]``."""
        for offset in np.ndindex(*self.kernel):
            idx = tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                        for o, d, s, n in zip(offset, self.dilations, self.strides, out))
            yield offset, xp[(slice(None), slice(None)) + idx]


class SumStream:
    """A float64 sum over streamed batches and the count of what it sums, mergeable across streams of the same
    layer; the statistic is the sum over the count. ``what`` names it in errors."""

    what = "statistics"

    def __init__(self, spec: PatchSpec) -> None:
        self.spec = spec
        self.sum: Optional[np.ndarray] = None
        self.count = 0

    def _add(self, s: np.ndarray, count: int) -> None:
        self.sum = s if self.sum is None else self.sum + s
        self.count += count

    def merge(self, other: "SumStream") -> None:
        """Add another stream's statistics (other batches of the same layer)."""
        if other.sum is None:
            return
        if self.sum is not None and self.sum.shape != other.sum.shape:
            raise ShapeError(f"cannot merge {self.what} of shape {other.sum.shape} into {self.sum.shape}")
        self._add(other.sum.copy(), other.count)

    def _normalized(self) -> np.ndarray:
        if self.sum is None or self.count == 0:
            raise ShapeError("no input was observed")
        return self.sum / self.count


class LayerMoments(SumStream):
    """Streams a layer's input into the sum of its patches per group (float64): memory is one patch per group
    whatever the number of batches, and the mean does not depend on batching (up to float64 rounding)."""

    what = "input statistics"  # sum: [groups, patch]

    def observe(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        if self.spec.kind == "conv":
            self._observe_conv(x)
        else:
            rows = x.reshape(-1, x.shape[-1])
            self._add(rows.sum(axis=0, dtype=np.float64)[None], rows.shape[0])

    def _observe_conv(self, x: np.ndarray) -> None:
        sp = self.spec
        if x.ndim != len(sp.kernel) + 2:
            raise ShapeError(f"a conv input of rank {len(sp.kernel) + 2} was expected, got shape {x.shape}")
        xp, out = sp.windows(x)
        c, g = x.shape[1], sp.groups
        per_tap = np.empty((c, sp.taps), np.float64)
        for t, (_, view) in enumerate(sp.tap_slices(xp, out)):
            per_tap[:, t] = view.sum(axis=(0, *range(2, view.ndim)), dtype=np.float64)
        self._add(per_tap.reshape(g, (c // g) * sp.taps), x.shape[0] * int(np.prod(out)))

    def mean(self) -> np.ndarray:
        """The mean patch per group, ``[groups, patch]``."""
        return self._normalized()


__all__ = ["LayerMoments", "PatchSpec", "SumStream"]
