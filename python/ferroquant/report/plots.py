"""The report's histogram PNGs: one per layer, the layer's input activation histogram with the chosen clip and
the observed range marked and labelled with their values. Needs matplotlib (Agg canvas, no pyplot state).

One figure is made once and reused: axes, labels, tick locators and artists are created once and each plot
only swaps the data and the texts (a new figure per plot spent most of its time creating tick objects:
0.6 s a plot on MobileNetV2, see ``bench/results/report_cost.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

import numpy as np

from ferroquant.outputs import replacing

Histogram = Tuple[np.ndarray, float, float]  # counts, lo, hi
#: bars drawn (the calibrator's bins summed in groups)
PLOT_BINS = 128
CLIP_COLOR, RANGE_COLOR, BAR_COLOR = "#d62728", "#555555", "#4a7ab5"


def plots_available() -> bool:
    """Whether matplotlib can be imported (the plots are skipped, with one warning, when it cannot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _bars(counts: np.ndarray, lo: float, hi: float) -> Tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, np.float64)
    if c.size % PLOT_BINS == 0 and c.size > PLOT_BINS:
        c = c.reshape(PLOT_BINS, -1).sum(1)
    return c, np.linspace(lo, hi if hi > lo else lo + 1e-6, c.size + 1)


class HistogramPlot:
    """A reusable 640x340 px figure: ``draw(path, row, hist)`` writes one layer's PNG."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

        self.fig = Figure(figsize=(6.4, 3.4), dpi=100)
        FigureCanvasAgg(self.fig)
        self.fig.subplots_adjust(left=0.11, right=0.98, top=0.87, bottom=0.15)
        ax = self.ax = self.fig.add_subplot(1, 1, 1)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=6))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_locator(MaxNLocator(8))
        ax.tick_params(labelsize=8)
        ax.set_ylabel("values per bin (log scale)", fontsize=9)
        self.bars = ax.stairs(np.ones(PLOT_BINS), np.arange(PLOT_BINS + 1.0), fill=True, baseline=0.8,
                              color=BAR_COLOR, label="histogram")
        self.clip = [ax.axvline(0.0, color=CLIP_COLOR, linestyle="--", linewidth=1.6) for _ in range(2)]
        self.seen = [ax.axvline(0.0, color=RANGE_COLOR, linestyle=":", linewidth=1.3) for _ in range(2)]
        self.legend = ax.legend([self.clip[0], self.seen[0]], ["clip", "observed"], fontsize=8, loc="upper right",
                                framealpha=0.85)
        self.title = ax.set_title("", fontsize=9)

    def draw(self, path: Path, row: Any, hist: Histogram) -> None:
        """Write ``path``: the histogram of ``row``'s input activation (a :class:`LayerStats`), its clip and
        observed range marked with their values, the share of values outside the clip in the title."""
        c, edges = _bars(*hist)
        self.bars.set_data(np.maximum(c, 0.8), edges, 0.8)
        for line, x in zip(self.clip, (row.clip_min, row.clip_max)):
            line.set_xdata([x, x])
        for line, x in zip(self.seen, (row.observed_min, row.observed_max)):
            line.set_xdata([x, x])
        left, right = min(edges[0], row.clip_min), max(edges[-1], row.clip_max)
        pad = 0.02 * (right - left) or 1e-6
        self.ax.set_xlim(left - pad, right + pad)
        self.ax.set_ylim(0.8, max(float(c.max()), 1.0) * 3)
        texts = self.legend.get_texts()
        texts[0].set_text(f"clip [{row.clip_min:.4g}, {row.clip_max:.4g}]")
        texts[1].set_text(f"observed [{row.observed_min:.4g}, {row.observed_max:.4g}]")
        self.ax.set_xlabel(f"input activation value ({row.activation}; {c.size} bins)", fontsize=9)
        self.title.set_text(f"{row.name} ({row.op_type}, {row.act_algorithm}): "
                            f"{100 * row.clipped_fraction:.3g}% of values outside the clip")
        with replacing(path) as f:
            self.fig.savefig(f, format="png")


def plot_histogram(path: Path, row: Any, hist: Histogram, plot: HistogramPlot = None) -> None:  # noqa: RUF013
    """One PNG (see :class:`HistogramPlot`); pass ``plot`` to reuse one figure for many."""
    (plot or HistogramPlot()).draw(path, row, hist)


__all__ = ["PLOT_BINS", "HistogramPlot", "plot_histogram", "plots_available"]
