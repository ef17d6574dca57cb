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


#: how many folds the per-batch and per-sample input sums are spread over (bias correction's test)
FOLDS = 16


class LayerMoments(SumStream):
    """Streams a layer's input into the sum of its patches per group (float64): memory is one patch per group
    whatever the number of batches, and the mean does not depend on batching (up to float64 rounding).

    The same sums are also kept in :data:`FOLDS` folds by batch (batch ``i`` in fold ``i mod FOLDS``) and by
    sample (the stream's sample ``j``, along each batch's first axis, in fold ``j mod FOLDS``): independent
    estimates of the mean, from which the bias correction tells a real shift of a layer's output from the noise
    of its estimate (:func:`ferroquant.quant.bias_correction.shift_test`). Memory: ``2 * FOLDS`` patches more."""

    what = "input statistics"  # sum: [groups, patch]

    def __init__(self, spec: PatchSpec) -> None:
        super().__init__(spec)
        self.batch_folds: Optional[np.ndarray] = None  # [FOLDS, groups, patch] sums
        self.sample_folds: Optional[np.ndarray] = None
        self.batch_counts = np.zeros(FOLDS, np.int64)
        self.sample_counts = np.zeros(FOLDS, np.int64)
        self.batches = 0
        self.samples = 0

    def observe(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        if self.spec.kind == "conv":
            per_sample, rows = self._conv_sums(x)
        else:
            n = x.shape[0] if x.ndim >= 2 else 1
            r = x.reshape(n, -1, x.shape[-1])
            per_sample, rows = r.sum(axis=1, dtype=np.float64)[:, None], r.shape[1]
        total = per_sample.sum(axis=0)
        self._add(total, per_sample.shape[0] * rows)
        if self.batch_folds is None:
            self.batch_folds = np.zeros((FOLDS, *total.shape))
            self.sample_folds = np.zeros((FOLDS, *total.shape))
        f = self.batches % FOLDS
        self.batch_folds[f] += total
        self.batch_counts[f] += per_sample.shape[0] * rows
        idx = (self.samples + np.arange(per_sample.shape[0])) % FOLDS
        np.add.at(self.sample_folds, idx, per_sample)
        np.add.at(self.sample_counts, idx, rows)
        self.batches += 1
        self.samples += per_sample.shape[0]

    def _conv_sums(self, x: np.ndarray) -> Tuple[np.ndarray, int]:
        """Each sample's sum of patches per group, ``[N, groups, patch]``, and the patches per sample."""
        sp = self.spec
        if x.ndim != len(sp.kernel) + 2:
            raise ShapeError(f"a conv input of rank {len(sp.kernel) + 2} was expected, got shape {x.shape}")
        xp, out = sp.windows(x)
        n, c, g = x.shape[0], x.shape[1], sp.groups
        per_tap = np.empty((n, c, sp.taps), np.float64)
        for t, (_, view) in enumerate(sp.tap_slices(xp, out)):
            per_tap[:, :, t] = view.sum(axis=tuple(range(2, view.ndim)), dtype=np.float64)
        return per_tap.reshape(n, g, (c // g) * sp.taps), int(np.prod(out))

    def merge(self, other: "SumStream") -> None:
        super().merge(other)
        if isinstance(other, LayerMoments) and other.batch_folds is not None:
            if self.batch_folds is None:
                self.batch_folds, self.sample_folds = other.batch_folds.copy(), other.sample_folds.copy()
            else:
                self.batch_folds += other.batch_folds
                self.sample_folds += other.sample_folds
            self.batch_counts += other.batch_counts
            self.sample_counts += other.sample_counts
            self.batches += other.batches
            self.samples += other.samples

    def mean(self) -> np.ndarray:
        """The mean patch per group, ``[groups, patch]``."""
        return self._normalized()

    def fold_means(self) -> Tuple[np.ndarray, np.ndarray, str]:
        """Independent estimates of :meth:`mean`: ``(means [F, groups, patch], counts [F], unit)``, one per
        non-empty fold of batches (``unit`` ``"batch"``) or, when fewer than 3 batches were seen, of samples
        (``"sample"``)."""
        if self.batch_folds is None:
            raise ShapeError("no input was observed")
        by_batch = self.batch_counts > 0
        sums, counts, unit = ((self.batch_folds, self.batch_counts, "batch") if by_batch.sum() >= 3
                              else (self.sample_folds, self.sample_counts, "sample"))
        keep = counts > 0
        return sums[keep] / counts[keep].reshape(-1, 1, 1), counts[keep], unit


__all__ = ["FOLDS", "LayerMoments", "PatchSpec", "SumStream"]
