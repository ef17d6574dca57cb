"""Output-aware clip search (issue 15, item 3), framework-neutral: an activation tensor's clip is chosen by the
error it causes in the *outputs* of the Conv / Gemm / MatMul layers that read it, on calibration data, rather
than by its own quantization error.

During calibration each reader layer streams a bounded, weighted sample of its input *patches*
(:mod:`ferroquant.quant.moments` says what a patch is) into a :class:`LayerPatches` (at most ``max_rows``
patches; ``rows_per_batch`` per batch, those with the largest values kept for sure). After the calibrator's own search, the candidates
are its clip scaled by the ratios of the tensor's IFMR search window (``search_range`` / ``search_step``,
0.7-1.3 by 0.01 by default; ratio 1 is the calibrator's own grid), and each candidate's error is
``Σ_readers mean_patches ||W x - W FQ(x)||²`` (float weight; :func:`ferroquant.ops.output_clip_errors`, in
Rust). The smallest wins; the calibrator's grid is kept unless another is strictly better.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ferroquant import ops
from ferroquant.errors import ShapeError
from ferroquant.quant.adaround import LayerGram
from ferroquant.quant.moments import PatchSpec
from ferroquant.quant.table import ActivationQuant


class LayerPatches:
    """A bounded, weighted sample of one layer's input patches, ``[rows, groups, p]`` float32, mergeable.

    Each batch gives ``rows_per_batch`` patches, stratified so that the rare large values (whose clipping
    dominates the error of a narrow clip) are not left to chance: the quarter of them whose patches hold the
    batch's largest ``|x|`` (weight 1), and the rest drawn at random from the other positions (each weighing
    for the positions it stands for). Past ``max_rows``, random rows are thinned (each dropped with
    probability 1/2, the survivors' weights doubled; top rows only once no random row is left), so the
    weighted sums stay unbiased. Fixed seed: the same data give the same sample."""

    def __init__(self, spec: PatchSpec, rows_per_batch: int = 64, max_rows: int = 512, seed: int = 0,
                 name: Optional[str] = None) -> None:
        self.spec = spec
        self.rows_per_batch, self.max_rows = int(rows_per_batch), int(max_rows)
        self.sampler = LayerGram(spec, rows_per_batch, seed, name)  # its patch extraction only
        self.rng = np.random.default_rng(seed + 1)
        self.buf: Optional[np.ndarray] = None
        self.weights = np.zeros(0, np.float64)
        self.top = np.zeros(0, bool)
        self.seen = 0  # positions (patches) observed
        self.name = name

    @property
    def kept(self) -> int:
        return len(self.weights)

    def _position_max(self, x: np.ndarray) -> np.ndarray:
        """``max |x|`` over each output position's patch, flat over ``[N, *out]``."""
        sp = self.spec
        if sp.kind != "conv":
            return np.abs(x.reshape(-1, x.shape[-1])).max(axis=1)
        xp, out = sp.windows(np.abs(x))
        m = None
        for _, view in sp.tap_slices(xp, out):
            v = view.max(axis=1)
            m = v if m is None else np.maximum(m, v)
        return m.reshape(-1)

    def observe(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        pm = self._position_max(x)
        total, k = pm.size, self.rows_per_batch
        if total <= k:
            pick, w, top = np.arange(total), np.ones(total), np.ones(total, bool)
        else:
            m = max(1, k // 4)
            order = np.argsort(-pm, kind="stable")
            rest = np.sort(order[m:])
            drawn = rest[np.sort(self.rng.choice(rest.size, k - m, replace=False))]
            pick = np.concatenate([np.sort(order[:m]), drawn])
            w = np.r_[np.ones(m), np.full(k - m, (total - m) / (k - m))]
            top = np.r_[np.ones(m, bool), np.zeros(k - m, bool)]
        self.seen += total
        self._add(self.sampler.patches_at(x, pick), w, top)

    def _add(self, rows: np.ndarray, w: np.ndarray, top: np.ndarray) -> None:
        if self.buf is not None and rows.shape[1:] != self.buf.shape[1:]:
            raise ShapeError(f"patches of shape {rows.shape[1:]} do not fit the sample {self.buf.shape[1:]}"
                             + (f" of {self.name}" if self.name else ""))
        buf = rows if self.buf is None else np.concatenate([self.buf, rows])
        w, top = np.concatenate([self.weights, w]), np.concatenate([self.top, top])
        while len(w) > self.max_rows:
            free = ~top if (~top).any() else np.ones(len(w), bool)
            drop = free & (self.rng.random(len(w)) < 0.5)
            w = np.where(free & ~drop, 2 * w, w)
            buf, w, top = buf[~drop], w[~drop], top[~drop]
        self.buf, self.weights, self.top = np.ascontiguousarray(buf, np.float32), w, top

    def merge(self, other: "LayerPatches") -> None:
        if other.kept:
            self.seen += other.seen
            self._add(other.rows(), other.weights, other.top)

    def rows(self) -> np.ndarray:
        if self.buf is None or self.kept == 0:
            raise ShapeError("no input was observed" + (f" by {self.name}" if self.name else ""))
        return self.buf


def window(start: float, end: float, step: float) -> List[float]:
    """The ratios of an IFMR search window (spec §3.3: ``floor((end - start) / step + 1e-6) + 1`` of them), with
    1.0 among them."""
    n = int(np.floor((end - start) / step + 1e-6)) + 1
    ratios = [round(start + i * step, 10) for i in range(n)]
    return sorted(set(ratios) | {1.0})


@dataclass(frozen=True)
class Reader:
    """One layer that reads the tensor: its name, sampled patches ``[n, groups, p]`` with their weights ``[n]``
    (:class:`LayerPatches`), and its weight ``[c_out, p]``."""

    layer: str
    patches: np.ndarray
    weights: np.ndarray
    weight: np.ndarray


def _grids(aq: ActivationQuant, ratios: Sequence[float], symmetric: bool) -> Tuple[np.ndarray, np.ndarray]:
    scales, zps = [], []
    for r in ratios:
        if r == 1.0:  # the calibrator's own grid, exactly
            scales.append(aq.scale)
            zps.append(aq.zero_point)
            continue
        p = ops.qparams_from_range(min(aq.clip_min * r, 0.0), max(aq.clip_max * r, 0.0), aq.bits, symmetric)
        scales.append(p.scale)
        zps.append(p.zero_point)
    return np.asarray(scales, np.float32), np.asarray(zps, np.int32)


def search_output_clip(aq: ActivationQuant, readers: Sequence[Reader], ratios: Sequence[float], symmetric: bool
                       ) -> Tuple[ActivationQuant, Dict[str, Any]]:
    """The qparams of ``aq``'s tensor whose clip (``aq``'s scaled by one of ``ratios``) gives its readers the
    smallest output error, and what the search saw (for the record)."""
    if aq.clip_max <= aq.clip_min:  # nothing to scale (constant zero tensor)
        return aq, {"skipped": "empty clip range"}
    ratios = list(ratios)
    scales, zps = _grids(aq, ratios, symmetric)
    losses = np.zeros(len(ratios), np.float64)
    for r in readers:
        losses += ops.output_clip_errors(r.patches, r.weight, scales, zps, aq.bits, r.weights, name=r.layer)
    own = ratios.index(1.0)
    best = int(np.argmin(losses))
    if not losses[best] < losses[own]:
        best = own
    ratio = ratios[best]
    record = {"ratio": ratio, "loss": float(losses[best]), "loss_calibrator": float(losses[own]),
              "readers": [r.layer for r in readers], "rows": [int(len(r.patches)) for r in readers],
              "clip_calibrator": [aq.clip_min, aq.clip_max]}
    if best == own:
        return replace(aq, details={**aq.details, "output_clip": record}), record
    lo, hi = aq.clip_min * ratio, aq.clip_max * ratio
    found = ActivationQuant(aq.tensor, float(scales[best]), int(zps[best]), aq.bits, aq.algorithm, float(lo),
                            float(hi), {**aq.details, "output_clip": record})
    return found, record


__all__ = ["LayerPatches", "Reader", "search_output_clip", "window"]
