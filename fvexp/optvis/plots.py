"""Plots as pictures, through matplotlib: a unit's activations over a folder, an atlas's layout by class.

matplotlib's object API (a `Figure`, no pyplot) keeps no global figure or backend, so plots drawn
from threads or several jobs in one process do not meet; it is imported when a plot is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAMED = 10  # classes named in a scatter's legend, one of matplotlib's ten default colours each; the rest grey


def histogram(values: np.ndarray, marks: dict[str, float], title: str, bins: int = 40) -> Image.Image:
    """A histogram of `values` with labelled vertical lines at `marks` (e.g. the top-k threshold).

    The bins span the marks too, so a mark beyond every value (an optimized image) stays in view.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    low = min(float(values.min()), *marks.values())
    high = max(float(values.max()), *marks.values())
    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.hist(values, bins=bins, range=(low, high if high > low else low + 1), color="steelblue")
    for i, (name, value) in enumerate(marks.items()):
        axes.axvline(value, color=("crimson", "darkorange", "seagreen")[i % 3], linewidth=2,
                     label=f"{name} {value:.3g}")
    axes.set(title=title, xlabel="activation", ylabel="images")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images, never 1.5
    axes.legend(fontsize=8)
    return picture(figure)


def scatter(xy: np.ndarray, labels: np.ndarray, names: list[str], grid: int) -> Image.Image:
    """The layout as points coloured by class (the most frequent ten named in a legend), with the grid.

    `xy` are the points in [0, 1]²; `labels` their class indices; `names` the class names by index.
    """
    from matplotlib.figure import Figure

    classes, counts = np.unique(labels, return_counts=True)
    shown = [int(c) for c in classes[np.argsort(-counts, kind="stable")][:NAMED]]
    figure = Figure(figsize=(8.4, 6.4), dpi=100, layout="constrained")
    axes = figure.subplots()

    def dots(mask: np.ndarray, colour: str, name: str) -> Any:
        return axes.scatter(xy[mask, 0], xy[mask, 1], s=10, color=colour, label=name[:26])

    handles = {-1: dots(~np.isin(labels, shown), "#cccccc", "other classes")}
    for rank in reversed(range(len(shown))):  # the most frequent class drawn last, on top
        c = shown[rank]
        handles[c] = dots(labels == c, f"C{rank}", names[c] if 0 <= c < len(names) else str(c))
    ticks = np.linspace(0, 1, grid + 1)
    edge = (-0.01, 1.01)  # a point on the edge drawn whole, not cut in half
    axes.set(xlim=edge, ylim=edge, xticks=ticks, yticks=ticks, xticklabels=[], yticklabels=[], aspect="equal")
    axes.tick_params(length=0)
    axes.grid(color="#eeeeee")
    axes.set_axisbelow(True)
    figure.legend(handles=[handles[c] for c in [*shown, -1]], loc="outside right upper", fontsize=8, frameon=False)
    return picture(figure)


def picture(figure: Figure) -> Image.Image:
    """The figure drawn (Agg) as an RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
