"""Charts as server-rendered SVG: no script, no CDN, readable in any browser."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup


def bars_svg(
    counts: Sequence[int], *, width: int = 640, height: int = 140, label: str = "jobs"
) -> Markup:
    """A bar per slot, scaled to the tallest, with the peak written at the top left."""
    if not counts or max(counts) == 0:
        return Markup(
            f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="no {label} finished yet"><text x="8" y="{height // 2}">'
            f"no {label} finished yet</text></svg>"
        )
    peak = max(counts)
    gap = 2
    bar_w = (width - gap * len(counts)) / len(counts)
    bars = []
    for i, n in enumerate(counts):
        h = (height - 20) * n / peak
        x = i * (bar_w + gap)
        bars.append(
            f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{n} {label}</title></rect>"
        )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{label} per time slice, peak {peak}">'
        f'<text x="4" y="12">peak {peak} {label}/slice</text>{"".join(bars)}</svg>'
    )
