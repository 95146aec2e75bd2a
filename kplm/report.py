"""``kplm report``: runs side by side in one self-contained HTML file.

The page holds, for the runs given (in that order, one colour each):

1. the ``kplm runs`` table (kind, status, steps, best validation metric, tokens/s, wall time,
   initialisation);
2. the **config keys that differ** between the runs (``run_dir`` aside): what was changed;
3. the **final metrics** of finished runs (``metrics.json``: validation, test, baselines);
4. one **plot** per TensorBoard scalar the runs logged: training loss, learning rate, the
   validation metrics, tokens/s, then the rest (gradient norm, ...), each an inline SVG with
   its axes, a line per run, and a legend.

Nothing is loaded from the network (no script, font or style sheet): the file can be mailed,
attached to a ticket or opened offline. TensorFlow is not imported (``kplm.events``). The plots
are a few lines of SVG written here: no plotting library is among kplm's dependencies, and
TensorBoard's own plots need its server.

Example:
>>> import tempfile
>>> page = render([tempfile.mkdtemp()])      # any run directory, even an empty one
>>> page.startswith("<!DOCTYPE html>") and "<script" not in page
True
"""
import html
import math
import time

from kplm.config import flatten

#: One colour per run (Tableau 10, the default cycle of matplotlib and TensorBoard's palette).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
#: The page's ``<meta name="generator">``: how a writer recognises a report it may replace.
GENERATOR = "kplm report"
#: Plots in this order first; any other scalar follows, alphabetically.
_FIRST = ("train/loss", "train/learning_rate")
_LAST = ("train/tokens_per_second", "train/examples_per_second", "train/mfu")

_DASHES = ("8 4", "3 3", "12 3 3 3", "2 5")
_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px;
       color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
          vertical-align: middle; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #ddd; padding: 8px; }
figcaption { font-size: 13px; font-weight: 600; margin-bottom: 4px; }
.note { color: #666; font-size: 12px; }
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _shown(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        import json
        return json.dumps(value)
    return str(value)


def config_differences(configs):
    """``{key: [value per run]}`` of the flattened config keys whose values differ (a key a
    run lacks counts as ``None``), ``run_dir`` aside."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys
            if k != "run_dir" and len({_shown(f.get(k)) for f in flat}) > 1}


def _ticks(low, high, count=5):
    """About ``count`` round tick values covering ``[low, high]``."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value):
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def svg_plot(series, width=460, height=260):
    """An SVG line plot of ``series``: ``[(colour, name, [(step, value), ...]), ...]``. Non-finite
    values are left out (a gap is not drawn as a line)."""
    left, right, top, bottom = 64, 12, 10, 34
    points = [(s, v) for _, _, data in series for s, v in data if math.isfinite(v)]
    if not points:
        return ""
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        pad = abs(y_low) * 0.05 or 1.0
        y_low, y_high = y_low - pad, y_high + pad
    else:
        pad = (y_high - y_low) * 0.05
        y_low, y_high = y_low - pad, y_high + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(step):
        return left + (step - x_low) / (x_high - x_low) * plot_w

    def y(value):
        return top + (1 - (value - y_low) / (y_high - y_low)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
             'stroke="#999"/>']
    for tick in _ticks(y_low, y_high):
        ty = y(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#555">{_e(_label(tick))}</text>')
    for tick in _ticks(x_low, x_high):
        tx = x(tick)
        parts.append(f'<text x="{tx:.1f}" y="{top + plot_h + 16}" font-size="11" '
                     f'text-anchor="middle" fill="#555">{_e(_label(tick))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="11" '
                 'text-anchor="middle" fill="#555">step</text>')
    for index, (colour, name, data) in enumerate(series):
        finite = [(s, v) for s, v in data if math.isfinite(v)]
        if not finite:
            continue
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in finite)
        title = f"<title>{_e(name)}</title>"
        # the first line widest and solid, the others narrower and dashed: runs whose curves
        # coincide (a repeated run, a shared warm-up) still show every colour
        style = (f'stroke-width="{3.5 if index == 0 else 2}"'
                 + (f' stroke-dasharray="{_DASHES[(index - 1) % len(_DASHES)]}"'
                    if index else ""))
        if len(finite) > 1:
            parts.append(f'<polyline class="series" fill="none" stroke="{colour}" {style} '
                         f'points="{coords}">{title}</polyline>')
        for s, v in finite if len(finite) <= 30 else finite[-1:]:
            parts.append(f'<circle class="series" cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" '
                         f'fill="{colour}">{title}</circle>')
    parts.append("</svg>")
    return "".join(parts)


def _plot_order(tags):
    first = [t for t in _FIRST if t in tags]
    validation = sorted(t for t in tags if t.startswith("validation/"))
    last = [t for t in _LAST if t in tags]
    rest = sorted(set(tags) - set(first) - set(validation) - set(last))
    return first + validation + rest + last


def _names(run_dirs):
    """Short, distinct names for the runs: their paths without the common prefix."""
    import os
    parts = [os.path.normpath(os.path.abspath(r)).split(os.sep) for r in run_dirs]
    common = 0
    while (len(parts) > 1 and all(len(p) > common + 1 for p in parts)
           and len({p[common] for p in parts}) == 1):
        common += 1
    names = [os.sep.join(p[common:]) or r for p, r in zip(parts, run_dirs)]
    return names if len(set(names)) == len(names) else list(run_dirs)


def is_report(path):
    """Whether the file ``path`` is a page ``render`` wrote (its generator tag in the head)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head


def render(run_dirs, title=None):
    """The report page (a string) for ``run_dirs``."""
    from kplm.events import scalars as read_scalars
    from kplm.run_summary import HEADERS, read_config, summarize, table_cells
    import json
    import os

    names = _names(run_dirs)
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(run_dirs))]
    logged = [read_scalars(r) for r in run_dirs]
    rows = [summarize(r, scalars=s) for r, s in zip(run_dirs, logged)]
    configs = [read_config(r) for r in run_dirs]
    title = title or "kplm report: " + ", ".join(names)

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta name="generator" content="{GENERATOR}">',
           f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{_e(title)}</h1>",
           f'<p class="note">Written by kplm report on {_e(time.strftime("%Y-%m-%d %H:%M"))} '
           f"from {len(run_dirs)} run director{'y' if len(run_dirs) == 1 else 'ies'}.</p>"]

    # 1. the runs table
    out.append("<h2>Runs</h2><table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in HEADERS)
               + "</tr>")
    for name, colour, row in zip(names, colours, rows):
        cells = table_cells(row)
        cells[0] = name
        out.append("<tr>" + f'<td><span class="swatch" style="background:{colour}"></span>'
                   f"{_e(cells[0])}</td>" + "".join(
                       f'<td{" class=num" if i in (3, 4, 5, 6) else ""}>{_e(c)}</td>'
                       for i, c in enumerate(cells[1:], 1)) + "</tr>")
    out.append("</table>")

    # 2. the config keys that differ
    if len(run_dirs) > 1:
        differences = config_differences(configs)
        out.append("<h2>Config keys that differ</h2>")
        if differences:
            out.append("<table><tr><th>key</th>" + "".join(f"<th>{_e(n)}</th>" for n in names)
                       + "</tr>")
            for key, values in differences.items():
                out.append(f"<tr><td>{_e(key)}</td>" + "".join(
                    f"<td>{_e(_shown(v))}</td>" for v in values) + "</tr>")
            out.append("</table>")
        else:
            out.append('<p class="note">The runs have the same config (run_dir aside).</p>')

    # 3. final metrics of finished runs
    finals = []
    for r in run_dirs:
        try:
            with open(os.path.join(r, "metrics.json"), encoding="utf-8") as f:
                metrics = json.load(f)
        except (OSError, ValueError):
            metrics = None
        finals.append({k: v for k, v in flatten(metrics).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
                      if isinstance(metrics, dict) else {})
    keys = sorted(set().union(*finals))
    keys = [k for k in keys if k.split(".")[0] in ("validation", "test", "baseline", "evaluate")]
    if keys:
        out.append("<h2>Final metrics</h2><table><tr><th>metric</th>"
                   + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>")
        for key in keys:
            out.append(f"<tr><td>{_e(key)}</td>" + "".join(
                f'<td class="num">{_e(_shown(f.get(key)))}</td>' for f in finals) + "</tr>")
        out.append("</table>")

    # 4. the curves
    tags = set().union(*[set(s) for s in logged]) if logged else set()
    out.append("<h2>Curves</h2>")
    legend = " ".join(f'<span><span class="swatch" style="background:{c}"></span>{_e(n)}'
                      "</span>" for n, c in zip(names, colours))
    out.append(f'<p class="note">{legend}</p><div class="plots">')
    drawn = 0
    for tag in _plot_order(tags):
        series = [(c, n, [(step, value) for step, _, value in s.get(tag, [])])
                  for n, c, s in zip(names, colours, logged) if s.get(tag)]
        svg = svg_plot(series)
        if svg:
            drawn += 1
            out.append(f'<figure class="plot"><figcaption>{_e(tag)}</figcaption>{svg}</figure>')
    out.append("</div>")
    if not drawn:
        out.append('<p class="note">No TensorBoard scalars were logged by these runs.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
