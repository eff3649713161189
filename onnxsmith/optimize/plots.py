"""Plots for the evidence card (matplotlib, Agg backend, SVG text kept as text) and input images as PNG."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onnxsmith.optimize.record import Card, pareto_front

if TYPE_CHECKING:
    import numpy as np

METRIC_LABELS = {"accuracy": "accuracy", "agreement": "top-1 agreement with fp32", "cosine_min": "min cosine to fp32"}
_COLORS = {"chosen": "#1a7f37", "rejected": "#8c959f", "measured": "#0969da", "front": "#cf222e"}


def pyplot_module(salt: str) -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        from onnxsmith.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "optimize", "the evidence card's plots need it") from exc

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # text.parse_math off: labels hold user strings (cell, step and target names); a '$' would be read as mathtext,
    # and an unbalanced one raised after every compare cell had run.
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9, "text.parse_math": False,
                         "text.usetex": False, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def figure_svg(fig: Any, plt: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE so it can sit inside HTML


def _place_labels(ax: Any, fig: Any, points: list[tuple[str, float, float]]) -> None:
    """Annotate each point with its name where the label overlaps no earlier label (greedy, display space)."""
    fig.canvas.draw()
    to_px = ax.transData.transform
    taken: list[tuple[float, float, float, float]] = []
    offsets = [(6, 3), (6, -11), (-6, 3), (-6, -11), (6, 14), (6, -22), (-6, 14), (-6, -22), (6, 25), (6, -33)]
    for name, x, y in points:
        px, py = to_px((x, y))
        width, height = 5.2 * len(name) + 2, 10.0
        chosen = offsets[0]
        for dx, dy in offsets:
            left = px + dx if dx > 0 else px + dx - width
            box = (left, py + dy, left + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                chosen = (dx, dy)
                taken.append(box)
                break
        ax.annotate(name, (x, y), textcoords="offset points", xytext=chosen, fontsize=8,
                    ha="left" if chosen[0] > 0 else "right")


def latency_accuracy_svg(card: Card) -> str | None:
    """p50 latency vs the constraint metric for every measured candidate; the Pareto front drawn and marked."""
    metric = card.constraints.metric
    steps = [s for s in card.steps
             if s.measured and s.candidate and s.quality(metric) is not None and s.latency_p50_ms]
    if not steps:
        return None
    plt = pyplot_module("latency-accuracy")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    front = set(pareto_front(steps, metric))
    for step in steps:
        chosen = step.status == "chosen"
        color = _COLORS["chosen"] if chosen else _COLORS["front"] if step.name in front else _COLORS["rejected"]
        ax.scatter([step.latency_p50_ms], [step.quality(metric)], s=90 if chosen else 36,
                   marker="*" if chosen else "o", color=color, zorder=3)
    ordered = sorted((s for s in steps if s.name in front), key=lambda s: s.latency_p50_ms or 0.0)
    if ordered:
        xs = [s.latency_p50_ms for s in ordered]
        ys = [s.quality(metric) for s in ordered]
        ax.step(xs, ys, where="post", color=_COLORS["front"], linewidth=1.2, label="Pareto front", zorder=2)
    try:
        reference = card.step(card.reference).quality(metric)
    except KeyError:
        reference = None
    if reference is not None:
        floor = reference - card.constraints.max_accuracy_drop
        ax.axhline(floor, color="#bf8700", linestyle="--", linewidth=1,
                   label=f"allowed drop ({card.constraints.max_accuracy_drop * 100:g} %)")
    if card.constraints.latency_budget_ms is not None:
        ax.axvline(card.constraints.latency_budget_ms, color="#8250df", linestyle=":", linewidth=1,
                   label="latency budget")
    ax.scatter([], [], marker="*", color=_COLORS["chosen"], s=90, label="chosen")
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}, higher is better")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=True, framealpha=0.85)
    ax.set_title("Latency vs accuracy")
    _place_labels(ax, fig, [(s.name, float(s.latency_p50_ms or 0.0), float(s.quality(metric) or 0.0))
                            for s in sorted(steps, key=lambda s: (-(s.quality(metric) or 0.0), s.latency_p50_ms))])
    return figure_svg(fig, plt)


def throughput_batch_svg(batching: Mapping[str, Any] | None) -> str | None:
    """Measured throughput against batch size from the batch sweep, each point labelled with its p50 latency."""
    if not batching or not batching.get("sweep", {}).get("points"):
        return None
    points = batching["sweep"]["points"]
    plt = pyplot_module("throughput-batch")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    batches = [p["batch"] for p in points]
    throughput = [p["throughput_per_s"] for p in points]
    ax.plot(batches, throughput, marker="o", color=_COLORS["measured"], label="throughput (batch / p50 latency)")
    for p in points:
        ax.annotate(f"p50 {p['latency_p50_ms']:.3g} ms", (p["batch"], p["throughput_per_s"]),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (samples/s)")
    if len(batches) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(0, max(throughput) * 1.2)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title(f"Throughput vs batch size ({batching['sweep'].get('step') or 'chosen step'})")
    return figure_svg(fig, plt)


def image_like(array: np.ndarray) -> np.ndarray | None:
    """An (H, W) or (H, W, 3) float view of one input sample when it looks like an image, else ``None``."""
    import numpy as np

    arr = np.asarray(array)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[1] >= 4 and arr.shape[2] >= 4:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] in (1, 3) and arr.shape[0] >= 4 and arr.shape[1] >= 4:
        return arr[:, :, 0] if arr.shape[2] == 1 else arr
    if arr.ndim == 2 and min(arr.shape) >= 4 and max(arr.shape) <= 4096 and not np.issubdtype(arr.dtype, np.integer):
        return arr
    return None


def input_png(array: np.ndarray, min_size: int = 96) -> bytes | None:
    """One input sample rendered as a PNG (min-max scaled, upscaled with nearest neighbours), or ``None``."""
    import numpy as np

    try:
        from PIL import Image
    except ImportError:  # pictures of the worst examples are optional: the .npz files hold the data
        return None
    image = image_like(array)
    if image is None:
        return None
    img = image.astype(np.float64)
    low, high = np.nanmin(img), np.nanmax(img)
    scaled = np.zeros_like(img) if high <= low else (img - low) / (high - low)
    pil = Image.fromarray(np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8))
    factor = max(1, -(-min_size // max(1, min(pil.size))))
    if factor > 1:
        pil = pil.resize((pil.size[0] * factor, pil.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


