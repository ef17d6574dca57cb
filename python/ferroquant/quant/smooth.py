"""What SmoothQuant balancing did, framework-neutral: one entry per normalization (ONNX node or torch module
names), and the record's ``methods.smooth_quant`` section built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ferroquant.ops import SmoothResult


@dataclass(frozen=True)
class Smoothed:
    """What balancing did to one normalization ``norm``: the layers it feeds, the alpha used, the search's int8
    output error with and without the scales (mean squared, on the sampled rows), and the smallest and largest
    scale; ``tensor``: the normalization's output tensor where the graph names one (ONNX); ``weight_bits``: the
    weights' bit width the search modelled (7 where the CPU's kernels take 7-bit weights); ``absorber``: what took
    the division, ``normalization`` (``norm`` names it, or the ``Mul`` that ends it), ``scalar`` (``norm`` names a
    ``Mul`` by a scalar constant, which became a per-channel vector) or ``linear`` (``norm`` names the MatMul/Gemm
    that makes the tensor, e.g. attention's value projection for its output projection)."""

    norm: str
    layers: Tuple[str, ...]
    alpha: float
    loss: float
    loss_unbalanced: float
    scale_min: float
    scale_max: float
    tensor: Optional[str] = None
    weight_bits: int = 8
    absorber: str = "normalization"

    @classmethod
    def of(cls, norm: str, layers: Sequence[str], found: SmoothResult, scales: np.ndarray,
           tensor: Optional[str] = None, weight_bits: int = 8, absorber: str = "normalization") -> "Smoothed":
        """The entry for the search result ``found`` and the ``scales`` applied."""
        return cls(norm, tuple(layers), found.alpha, float(np.min(found.losses)), found.loss_unbalanced,
                   float(scales.min()), float(scales.max()), tensor, weight_bits, absorber)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"norm": self.norm}
        if self.tensor is not None:
            out["tensor"] = self.tensor
        out.update(layers=list(self.layers), alpha=self.alpha, loss=self.loss,
                   loss_unbalanced=self.loss_unbalanced, scale_min=self.scale_min, scale_max=self.scale_max,
                   weight_bits=self.weight_bits, absorber=self.absorber)
        return out


def report(done: List[Smoothed], skipped: List[Tuple[str, str]]) -> Dict[str, Any]:
    """The record's ``methods.smooth_quant`` entry."""
    return {"groups": [d.to_json() for d in done],
            "skipped": [{"norm": n, "reason": why} for n, why in skipped]}


__all__ = ["Smoothed", "report"]
