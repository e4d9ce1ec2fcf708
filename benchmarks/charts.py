"""Curves as text: one line of block characters per series, one character per row.

A picture that fits in a terminal, a log and a README code block, and diffs as
text (`dmguard soak` prints it at the end and writes it beside its CSV):

    elapsed s   0 .......... 600
    sent/s      ▁▁▁▁▁▁▁▁▁▁▁▁████████████████████████▁▁▁▁▁▁▁▁▁▁▁▁▁   2 .. 10
    workers     ▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁████████████████████████████▁▁▁▁   1 .. 2

Each series is scaled from its own smallest to its largest value (written at the
end of its line); a row without a value is a blank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per value, the smallest value ▁ and the largest █."""
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    lo, hi = min(known), max(known)
    top = len(BLOCKS) - 1

    def block(v: float | None) -> str:
        if v is None:
            return " "
        return BLOCKS[round(top * (v - lo) / (hi - lo)) if hi > lo else 0]

    return "".join(block(v) for v in values)


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def text_chart(
    rows: Sequence[Mapping[str, Any]],
    series: Sequence[tuple[str, str]],
    *,
    x_key: str,
    x_label: str | None = None,
) -> str:
    """The `series` (row key, label) of `rows` as sparklines under an x axis of `x_key`."""
    labels = [x_label or x_key, *(label for _, label in series)]
    width = max(len(label) for label in labels) + 2
    xs = [r[x_key] for r in rows]
    lines = [f"{labels[0]:<{width}}{_num(xs[0]) if xs else ''} .. {_num(xs[-1]) if xs else ''}"]
    for key, label in series:
        values = [r.get(key) for r in rows]
        known = [v for v in values if v is not None]
        scale = f"   {_num(min(known))} .. {_num(max(known))}" if known else "   no data"
        lines.append(f"{label:<{width}}{sparkline(values)}{scale}")
    return "\n".join(lines)
