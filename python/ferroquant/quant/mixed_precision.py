"""Mixed precision, framework-neutral: choose each layer's weight bits and each activation tensor's bits under a
budget, from per-layer sensitivities measured by a front end (:mod:`ferroquant.onnx.mixed_precision`).

The model of the error: layer ``l`` at weight bits ``w`` reading its input at ``a`` bits adds the relative noise
power ``noise[(w, a)] = |y_q - y|^2 / |y|^2`` (the layer alone quantized on its FP32 input: the report's local
SQNR, ``-10 log10(noise)``), and the model's error grows with the sum of the layers' noises. Two greedy passes
over layers (knapsack by ratio, deterministic: ties go to the layer or tensor that comes first in graph order):

1. **weights**: start every layer at its widest weight bits; while the weight codes take more bytes than the
   budget, move one layer one step down, the one whose noise grows least per byte saved;
2. **activations**: start every tensor at its narrowest bits (8); move one tensor one step up, the one whose
   readers' noise falls most per MAC newly run wide, while the MACs on wide activations stay within
   ``1 - int8_compute_share`` of the total and the step lowers the noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ferroquant.errors import ConfigError

Bits = Tuple[int, int]  # (weight bits, activation bits)


@dataclass(frozen=True)
class LayerCost:
    """One layer's numbers: its input ``tensor`` (activation bits are per tensor, shared by its readers), weight
    elements, multiply-accumulates per sample, the weight bits open to it (increasing; one value when fixed, e.g.
    NUQ) and the measured relative noise per ``(weight bits, activation bits)``."""

    name: str
    tensor: str
    weight_elements: int
    macs: float
    weight_bits: Tuple[int, ...]
    noise: Mapping[Bits, float]

    def weight_bytes(self, bits: int) -> float:
        return self.weight_elements * bits / 8.0


@dataclass(frozen=True)
class Budget:
    """At most ``weight_bytes`` of weight codes; at least ``int8_compute_share`` of the MACs on the narrowest
    activation bits."""

    weight_bytes: float
    int8_compute_share: float


@dataclass
class Choice:
    """What :func:`choose_bits` decided, with the totals it reached."""

    weight_bits: Dict[str, int]
    activation_bits: Dict[str, int]
    weight_bytes: float
    all_int8_weight_bytes: float
    wide_mac_share: float
    noise: float
    steps: List[str] = field(default_factory=list)

    def layer_bits(self, layer: LayerCost) -> Bits:
        return self.weight_bits[layer.name], self.activation_bits[layer.tensor]


def _noise(l: LayerCost, w: int, a: int) -> float:
    try:
        return float(l.noise[(w, a)])
    except KeyError:
        raise ConfigError(f"mixed precision: no measured error for layer {l.name!r} at W{w}A{a}") from None


def _demote_weights(layers: Sequence[LayerCost], wbits: Dict[str, int], abits: Dict[str, int], limit: float,
                    steps: List[str]) -> None:
    """Pass 1: one weight step down at a time, least noise per byte saved first, until within ``limit``."""
    size = sum(l.weight_bytes(wbits[l.name]) for l in layers)
    while size > limit:
        best: Optional[Tuple[float, int, LayerCost, int]] = None
        for i, l in enumerate(layers):
            lower = [b for b in l.weight_bits if b < wbits[l.name]]
            if not lower:
                continue
            w, to = wbits[l.name], lower[-1]
            saved = l.weight_bytes(w) - l.weight_bytes(to)
            if saved <= 0:
                continue
            a = abits[l.tensor]
            ratio = (_noise(l, to, a) - _noise(l, w, a)) / saved
            if best is None or (ratio, i) < best[:2]:
                best = (ratio, i, l, to)
        if best is None:
            raise ConfigError(f"methods.mixed_precision: the weight budget of {limit:.0f} bytes cannot be met: the "
                              f"narrowest weight bits allowed still take {size:.0f} bytes")
        _, _, l, to = best
        size -= l.weight_bytes(wbits[l.name]) - l.weight_bytes(to)
        steps.append(f"{l.name}: weights {wbits[l.name]} -> {to} bits")
        wbits[l.name] = to


def _promote_activations(layers: Sequence[LayerCost], act_bits: Mapping[str, Tuple[int, ...]],
                         wbits: Dict[str, int], abits: Dict[str, int], wide_limit: float, steps: List[str]) -> float:
    """Pass 2: one activation step up at a time, most noise removed per MAC newly run wide first, within
    ``wide_limit`` MACs; returns the MACs on wide activations."""
    readers: Dict[str, List[LayerCost]] = {}
    for l in layers:
        readers.setdefault(l.tensor, []).append(l)
    order = list(readers)
    base = {t: act_bits[t][0] for t in order}
    wide = 0.0
    while True:
        best: Optional[Tuple[float, int, str, int, float]] = None
        for i, t in enumerate(order):
            higher = [b for b in act_bits[t] if b > abits[t]]
            if not higher:
                continue
            to = higher[0]
            gain = sum(_noise(l, wbits[l.name], abits[t]) - _noise(l, wbits[l.name], to) for l in readers[t])
            cost = sum(l.macs for l in readers[t]) if abits[t] == base[t] else 0.0
            if gain <= 0 or wide + cost > wide_limit:
                continue
            score = -gain / cost if cost > 0 else -float("inf")
            if best is None or (score, i) < best[:2]:
                best = (score, i, t, to, cost)
        if best is None:
            return wide
        _, _, t, to, cost = best
        steps.append(f"{t}: activations {abits[t]} -> {to} bits")
        abits[t], wide = to, wide + cost


def choose_bits(layers: Sequence[LayerCost], act_bits: Mapping[str, Tuple[int, ...]], budget: Budget) -> Choice:
    """Each layer's weight bits and each tensor's activation bits (``act_bits``: the bits open to each tensor,
    increasing) under ``budget`` (see the module docstring). A budget that the narrowest weights cannot meet is a
    :class:`ConfigError`."""
    if not layers:
        raise ConfigError("mixed precision: no layer to choose bits for")
    missing = sorted({l.tensor for l in layers} - set(act_bits))
    if missing:
        raise ConfigError(f"mixed precision: no activation bits given for tensors {missing}")
    wbits = {l.name: l.weight_bits[-1] for l in layers}
    abits = {l.tensor: act_bits[l.tensor][0] for l in layers}
    steps: List[str] = []
    _demote_weights(layers, wbits, abits, budget.weight_bytes, steps)
    total = sum(l.macs for l in layers)
    slack = 1e-9 * total  # (1 - 0.8) * 1000 is 199.99999999999997: a share given as 0.8 allows 200 of 1000
    wide = _promote_activations(layers, act_bits, wbits, abits,
                                (1.0 - budget.int8_compute_share) * total + slack, steps)
    int8 = sum(l.weight_bytes(8) for l in layers)
    size = sum(l.weight_bytes(wbits[l.name]) for l in layers)
    noise = sum(_noise(l, wbits[l.name], abits[l.tensor]) for l in layers)
    return Choice(wbits, abits, size, int8, wide / total if total > 0 else 0.0, noise, steps)


__all__ = ["Budget", "Choice", "LayerCost", "choose_bits"]
