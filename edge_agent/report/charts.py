"""The report's charts, drawn by pygal as inline SVG: traffic per protocol over time, and the
anomaly-score timeline (or, with no model score in the source, findings per window).

pygal writes plain SVG with its CSS inside and needs nothing but the standard library, which
suits a Pi writing a report (matplotlib's SVG backend draws as well but takes seconds to import
there and weighs tens of MB). Its tooltips need a script fetched from the web, so no script is
kept (``js=[]``, and its inline config script is dropped); hover text comes from SVG ``<title>``
elements instead, one per time column.

Windows are grouped into at most ``MAX_POINTS`` columns (consecutive windows summed), so a
month of 60 s windows makes as light a chart as an hour. Columns follow the windows the source
holds: a gap in time (another capture, an agent switched off) does not stretch the axis.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edge_agent.report.plant import Plant, Window

MAX_POINTS = 150
MAX_BARS = 40               # up to this many columns, bars; past it, a filled area
MAX_PROTOCOLS = 8            # the busiest protocols by packets; the rest sum into "other"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7",
           "#9c755f", "#bab0ac")
SEVERITY_COLORS = {"low": "#74a9cf", "medium": "#f0b400", "high": "#e8590c",
                   "critical": "#c92a2a"}
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif'
SVG_NS = "http://www.w3.org/2000/svg"


@dataclass
class Column:
    start: float
    end: float
    windows: list[Window]


@dataclass
class Chart:
    svg: str
    note: str = ""


def columns(windows: list[Window]) -> list[Column]:
    if not windows:
        return []
    per = -(-len(windows) // MAX_POINTS)
    return [Column(chunk[0].start, max(w.end for w in chunk), chunk)
            for chunk in (windows[i:i + per] for i in range(0, len(windows), per))]


def _label(ts: float, span: float) -> str:
    fmt = "%H:%M" if span < 86400 else "%m-%d %H:%M" if span < 30 * 86400 else "%Y-%m-%d %Hh"
    return time.strftime(fmt, time.gmtime(ts))


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _style(colors: tuple[str, ...]) -> Any:
    from pygal.style import Style
    return Style(background="transparent", plot_background="#ffffff",
                 foreground="#343a40", foreground_strong="#212529", foreground_subtle="#adb5bd",
                 opacity=".55", opacity_hover=".8", transition="0ms", colors=colors,
                 font_family=FONT, label_font_size=11, major_label_font_size=11,
                 legend_font_size=12, title_font_size=12, value_font_size=11)


def _config(colors: tuple[str, ...], n: int, series: int, **extra: Any) -> dict[str, Any]:
    return {**dict(style=_style(colors), js=[], disable_xml_declaration=True, width=1300,
                   height=340, explicit_size=False, legend_at_bottom=True,
                   legend_at_bottom_columns=min(series, 9), legend_box_size=11,
                   truncate_legend=-1, show_minor_x_labels=True,
                   x_labels_major_every=max(1, n // 12), truncate_label=-1, margin=6,
                   spacing=8, include_x_axis=True), **extra}


def _finish(chart: Any, chart_id: str, cols: list[Column], hover: list[str]) -> str:
    """The chart's SVG without scripts, comments or pygal's tooltip hooks, with one hover
    column per time column (at the x of its axis label)."""
    chart.uuid = chart_id
    root = chart.render_tree()
    for parent in list(root.iter()):
        for child in list(parent):
            if not isinstance(child.tag, str) or child.tag.endswith(("script", "desc")) or (
                    "tooltip-overlay" in child.get("class", "")):
                parent.remove(child)
    g_tag = f"{{{SVG_NS}}}g"
    plot = next((g for g in root.iter(g_tag) if g.get("class") == "plot"), None)
    axis = next((g for g in root.iter(g_tag) if g.get("class", "").startswith("axis x")), None)
    xs: list[float] = []
    if axis is not None:
        # Every label is drawn (show_minor_x_labels) so each column's x is known; only the
        # major ones stay.
        for guides in [g for g in axis if g.get("class") == "guides"]:
            text = guides.find(f"{{{SVG_NS}}}text")
            if text is None:
                continue
            xs.append(float(text.get("x", "0")))
            if "major" not in text.get("class", ""):
                axis.remove(guides)
    if plot is not None and len(xs) == len(cols) == len(hover):
        bg = plot.find(f"{{{SVG_NS}}}rect")
        height = bg.get("height", "0") if bg is not None else "0"
        step = (xs[-1] - xs[0]) / (len(xs) - 1) if len(xs) > 1 else float(
            bg.get("width", "40") if bg is not None else 40)
        layer = ET.SubElement(plot, g_tag, {"class": "hover-columns"})
        for x, text in zip(xs, hover):
            r = ET.SubElement(layer, f"{{{SVG_NS}}}rect", {
                "x": f"{x - step / 2:.1f}", "y": "0", "width": f"{step:.1f}",
                "height": height, "class": "hover-column"})
            ET.SubElement(r, f"{{{SVG_NS}}}title").text = text
    ET.register_namespace("", SVG_NS)
    return ET.tostring(root, encoding="unicode")


def traffic(plant: Plant) -> Chart:
    """Packets per protocol in each column, stacked."""
    import pygal
    cols = columns(plant.windows)
    if not cols:
        return Chart("", "No summaries in this source: no traffic to chart.")
    totals: Counter[str] = Counter()
    for w in plant.windows:
        totals.update(w.packets)
    keep = [p for p, _ in totals.most_common(MAX_PROTOCOLS) if totals[p] > 0]
    rest = [p for p in totals if p not in keep and totals[p] > 0]
    series = keep + (["other"] if rest else [])
    values: dict[str, list[int]] = {s: [] for s in series}
    hover = []
    span = cols[-1].end - cols[0].start
    for c in cols:
        sums: Counter[str] = Counter()
        for w in c.windows:
            sums.update(w.packets)
        for p in keep:
            values[p].append(sums[p])
        if rest:
            values["other"].append(sum(sums[p] for p in rest))
        parts = [f"{s}: {values[s][-1]:,}" for s in series if values[s][-1]]
        hover.append(f"{_stamp(c.start)} .. {_stamp(c.end)} UTC ({len(c.windows)} window"
                     f"{'s' * (len(c.windows) != 1)})\n" + ("\n".join(parts) or "no packets"))
    per = len(cols[0].windows)
    length = cols[0].windows[0].end - cols[0].windows[0].start
    unit = f"{per} × {length:g} s windows" if per > 1 else f"{length:g} s window"
    opts = _config(PALETTE, len(cols), len(series), y_title=f"packets per {unit}",
                   x_title="time (UTC)")
    # Few columns read best as bars; many as a filled area.
    chart = (pygal.StackedBar(**opts) if len(cols) <= MAX_BARS else
             pygal.StackedLine(fill=True, show_dots=True, dots_size=1,
                               stroke_style={"width": 1}, **opts))
    chart.x_labels = [_label(c.start, span) for c in cols]
    for s in series:
        chart.add(s, values[s])
    note = (f"{len(plant.windows)} windows in {len(cols)} columns"
            if per > 1 else f"{len(plant.windows)} window{'s' * (len(plant.windows) != 1)}")
    return Chart(_finish(chart, "traffic", cols, hover), note)


def anomaly(plant: Plant) -> Chart:
    """Model scores against the threshold, findings marked; or findings by severity."""
    import pygal
    cols = columns(plant.windows)
    occ = plant.occurrences
    if not cols and occ:
        # alerts without their summaries: one column per distinct minute of findings
        starts = sorted({o.ts // 60 * 60 for o in occ})
        cols = [Column(s, s + 60, [Window(s, s + 60)]) for s in starts][-MAX_POINTS:]
    if not cols:
        return Chart("", "No summaries and no findings in this source.")
    span = cols[-1].end - cols[0].start
    bounds = [c.start for c in cols]

    def col_of(ts: float) -> int:
        lo, hi = 0, len(bounds) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bounds[mid] <= ts:
                lo = mid
            else:
                hi = mid - 1
        return lo

    sev_counts = {s: [0] * len(cols) for s in SEVERITY_COLORS}
    best: list[float | None] = [None] * len(cols)
    thresholds: list[float | None] = [None] * len(cols)
    for o in occ:
        i = col_of(o.ts)
        sev_counts[o.severity][i] += 1
        if o.score is not None:
            best[i] = o.score if best[i] is None else max(best[i], o.score)
            if o.threshold is not None:
                thresholds[i] = o.threshold
    for i, c in enumerate(cols):
        known = [w.threshold for w in c.windows if w.threshold is not None]
        if known and thresholds[i] is None:
            thresholds[i] = max(known)
    for ts, score, threshold in plant.scores:
        i = col_of(ts)
        best[i] = score if best[i] is None else max(best[i], score)
        thresholds[i] = threshold
    labels = [_label(c.start, span) for c in cols]
    hover = []
    for i, c in enumerate(cols):
        lines = [f"{_stamp(c.start)} .. {_stamp(c.end)} UTC"]
        if best[i] is not None:
            lines.append(f"highest score {best[i]:.3g} (threshold {thresholds[i]:.3g})"
                         if thresholds[i] is not None else f"highest score {best[i]:.3g}")
        found = [f"{sev_counts[s][i]} {s}" for s in reversed(list(SEVERITY_COLORS))
                 if sev_counts[s][i]]
        lines.append("findings: " + (", ".join(found) if found else "none"))
        hover.append("\n".join(lines))
    bars = None
    if occ:
        bars = pygal.StackedBar(**_config(tuple(SEVERITY_COLORS.values()), len(cols), 4,
                                          y_title="findings", x_title="time (UTC)",
                                          height=230, print_values=False))
        bars.x_labels = labels
        for sev, counts in sev_counts.items():
            bars.add(f"{sev} findings", counts)
    if any(b is not None for b in best):
        known = [t for t in thresholds if t is not None]
        level = max(known) if known else None
        threshold_line = [t if t is not None else level for t in thresholds]
        scores = [b for b in best if b is not None]
        log = level is not None and max(scores) / max(min(scores + [level]), 1e-12) > 50
        chart = pygal.Line(**_config(("#343a40", "#c92a2a"), len(cols), 2, logarithmic=log,
                                     show_dots=True, dots_size=4, height=280,
                                     y_title="anomaly score" + (" (log)" if log else ""),
                                     range=None if log else (0, max(scores + known) * 1.1)))
        chart.x_labels = labels
        chart.add("highest model score in the window", best, stroke=False)
        chart.add("threshold", threshold_line, show_dots=False,
                  stroke_style={"width": 2, "dasharray": "6,4"})
        svg = _finish(chart, "anomaly", cols, hover)
        if bars is not None:
            svg += _finish(bars, "findings", cols, hover)
        note = ("Above: the model's highest score per window against its threshold; below: "
                "findings per window by severity. "
                + ("" if plant.scores else "The summaries carry a model score only when it "
                   "passed the threshold, so windows without a model finding show no score."))
        return Chart(svg, note)
    if bars is None:
        return Chart("", "No model score and no finding in this source.")
    return Chart(_finish(bars, "findings", cols, hover),
                 "No model score in this source (no model was loaded, or it flagged nothing): "
                 "findings per window by severity instead.")
