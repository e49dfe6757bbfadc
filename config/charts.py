"""Chart specifications: what a page hands to ``static/js/charts.js`` (Chart.js, installed
by npm and served by the app) to draw, with its axes' titles and units.

A spec is plain JSON (``json_script`` puts it in the page; the CSP allows no inline
script). Values are exact decimals rendered as strings; the chart parses them for
drawing only. The figures the page states in text stay the source of truth: a chart is a
picture of them. Any app may build one; this module imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal


@dataclass(frozen=True)
class ChartSeries:
    label: str  # "Estimated cost"
    # "" is a point without a value: a gap in a line, never a zero.
    values: Sequence[Decimal | int | str]
    unit: str  # what a value is counted in, shown on hover: "USD", "GPU-h", "tokens"
    axis: Literal["y", "y1"] = "y"  # y1: a second scale, on the right


def chart_spec(
    *,
    kind: Literal["bar", "line"],
    labels: Sequence[str],
    series: Sequence[ChartSeries],
    x_title: str,
    y_title: str,
    y1_title: str = "",
) -> dict[str, Any]:
    """The JSON ``charts.js`` draws: titled axes with units, a value with its unit on hover."""
    return {
        "kind": kind,
        "labels": list(labels),
        "series": [
            {
                "label": one.label,
                "values": [str(value) for value in one.values],
                "unit": one.unit,
                "axis": one.axis,
            }
            for one in series
        ],
        "axes": {"x": x_title, "y": y_title, "y1": y1_title},
    }
