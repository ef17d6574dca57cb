"""Learned rounding (AdaRound; Nagel et al. 2020, AIMET), framework-neutral: a layer's input is streamed into
the Gram matrix of its input *patches* (:mod:`ferroquant.quant.moments` says what a patch is) during
calibration, and :func:`learn_rounding` then rounds each weight down or up on its ARQ grid (scale and zero
point unchanged) so that the layer's output on those patches stays close to the float output
(:func:`ferroquant.ops.adaround`, in Rust).

Memory is bounded: each batch contributes at most ``rows_per_batch`` patches, drawn at random (a fixed seed: the
same data give the same draw), and only the ``[groups, p, p]`` float64 sums are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ferroquant import ops
from ferroquant.errors import ShapeError
from ferroquant.ops.types import AdaRoundOptions
from ferroquant.quant.moments import PatchSpec, SumStream
from ferroquant.quant.table import LayerInfo, WeightQuant


class LayerGram(SumStream):
    """Streams sampled input patches of one layer into ``Σ x xᵀ`` per group (float64), mergeable."""

    what = "Gram matrices"  # sum: [groups, p, p]

    def __init__(self, spec: PatchSpec, rows_per_batch: int = 512, seed: int = 0, name: Optional[str] = None
                 ) -> None:
        super().__init__(spec)
        self.rows_per_batch = int(rows_per_batch)
        self.rng = np.random.default_rng(seed)
        self.name = name

    def _pick(self, total: int) -> np.ndarray:
        if total <= self.rows_per_batch:
            return np.arange(total)
        return np.sort(self.rng.choice(total, self.rows_per_batch, replace=False))

    def patches(self, x: np.ndarray) -> np.ndarray:
        """Sampled patches of one batch, ``[rows, groups, p]`` (in the weight's order)."""
        return self.patches_at(x, None)

    def patches_at(self, x: np.ndarray, pick: Optional[np.ndarray]) -> np.ndarray:
        """The patches of one batch at the output positions ``pick`` (flat over ``[N, *out]``; None: a sample
        of ``rows_per_batch``), ``[rows, groups, p]`` (in the weight's order)."""
        x = np.asarray(x, np.float32)
        sp = self.spec
        if sp.kind != "conv":
            rows = x.reshape(-1, x.shape[-1])
            return rows[self._pick(rows.shape[0]) if pick is None else pick][:, None, :]
        if x.ndim != len(sp.kernel) + 2:
            raise ShapeError(f"a conv input of rank {len(sp.kernel) + 2} was expected, got shape {x.shape}")
        xp, out = sp.windows(x)
        pick = self._pick(x.shape[0] * int(np.prod(out))) if pick is None else pick
        n, *pos = np.unravel_index(pick, (x.shape[0], *out))
        channels = np.arange(x.shape[1])[None, :]
        taps = []  # per kernel offset, [rows, C]
        for offset in np.ndindex(*sp.kernel):
            idx = tuple((o * d + s * p)[:, None] for o, d, s, p in zip(offset, sp.dilations, sp.strides, pos))
            taps.append(xp[(n[:, None], channels) + idx])
        g = sp.groups
        return np.stack(taps, axis=-1).reshape(len(pick), g, (x.shape[1] // g) * sp.taps)

    def observe(self, x: np.ndarray) -> None:
        rows = self.patches(x)
        if self.sum is None:
            self.sum = np.zeros((rows.shape[1], rows.shape[2], rows.shape[2]), np.float64)
        if rows.shape[1:] != self.sum.shape[:2]:
            raise ShapeError(f"patches of shape {rows.shape[1:]} do not fit the Gram {self.sum.shape}")
        for g in range(rows.shape[1]):
            ops.hessian_update(self.sum[g], np.ascontiguousarray(rows[:, g]), self.name)
        self.count += rows.shape[0]

    def gram(self) -> np.ndarray:
        """``Σ x xᵀ / n`` per group, ``[groups, p, p]``."""
        return self._normalized()


def weight_rows(layer: LayerInfo, w: np.ndarray) -> np.ndarray:
    """The weight as ``[C_out, p]``: one row per output channel, in the order its patch is read."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(w, np.float32), layer.axis, 0).reshape(w.shape[layer.axis], -1))


def _rows_back(layer: LayerInfo, rows: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    moved = (shape[layer.axis],) + tuple(s for i, s in enumerate(shape) if i != layer.axis)
    return np.moveaxis(rows.reshape(moved), 0, layer.axis)


def reconstruction_error(w_rows: np.ndarray, w_q_rows: np.ndarray, gram: np.ndarray) -> float:
    """``Σ_o (w_o - w_q,o)ᵀ G (w_o - w_q,o)``: the mean squared output error of the layer over the patches the
    Gram ``[groups, p, p]`` was made from, summed over output channels."""
    d = np.asarray(w_rows, np.float64) - np.asarray(w_q_rows, np.float64)
    g = np.asarray(gram, np.float64)
    return float(np.einsum("ri,rij,rj->", d, np.repeat(g, d.shape[0] // g.shape[0], axis=0), d))


@dataclass(frozen=True)
class Rounded:
    """What learned rounding did to one layer (for the record)."""

    weight: WeightQuant
    changed: float  # share of the codes that differ from round-to-nearest
    loss_nearest: float
    loss: float

    def to_json(self) -> Dict[str, Any]:
        return {"changed": round(self.changed, 6), "loss_nearest": self.loss_nearest, "loss": self.loss}


def learn_rounding(layer: LayerInfo, w: np.ndarray, wq: WeightQuant, gram: np.ndarray,
                   options: AdaRoundOptions) -> Rounded:
    """The layer's ARQ weight with codes learned by AdaRound on ``gram`` (same scale and zero point)."""
    rows = weight_rows(layer, w)
    c_out = rows.shape[0]
    scale = np.broadcast_to(np.asarray(wq.scale, np.float32).reshape(-1), (c_out,)) if np.size(wq.scale) == 1 \
        else np.asarray(wq.scale, np.float32).reshape(-1)
    zp = np.broadcast_to(np.asarray(wq.zero_point).reshape(-1), (c_out,)) if np.size(wq.zero_point) == 1 \
        else np.asarray(wq.zero_point).reshape(-1)
    r = ops.adaround(rows, scale, zp, gram, wq.bits, options, name=layer.weight)
    codes = _rows_back(layer, r.codes, w.shape).astype(wq.codes.dtype)
    changed = float(np.mean(codes != wq.codes))
    return Rounded(replace(wq, codes=np.ascontiguousarray(codes)), changed, r.loss_nearest, r.loss)


__all__ = ["LayerGram", "Rounded", "learn_rounding", "reconstruction_error", "weight_rows"]
