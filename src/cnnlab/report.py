"""Markdown and self-contained HTML reports of a run or a study folder.

A report is a list of sections (title, Markdown text, tables, figures). The
Markdown file links figures by relative path; the HTML page embeds them as
base64 so it can be mailed or uploaded on its own.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cnnlab.files import atomic_write_text


@dataclass
class Figure:
    path: Path
    caption: str = ""
    wide: bool | None = None  # the full page width; default: when the image is much wider than tall

    def is_wide(self) -> bool:
        if self.wide is not None:
            return self.wide
        w, h = _png_size(Path(self.path))
        return w >= 1.6 * h


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 1, 1
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    items: list = field(default_factory=list)  # Table | Figure | str (pre-formatted code block)


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: counts (and whole floats, as CSV files give them back) as integers with thousands
    separators, other numbers to ``digits`` decimals without padding zeros (a margin of 1.0 is ``1``)."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        text = f"{v:,.{digits}f}".rstrip("0").rstrip(".")
        return text if text not in ("0", "-0") else f"{v:.{digits}g}"
    return str(v)


def headline(key: str, v: Any) -> str:
    """One headline number as every output shows it: the console line, report.md and report.html.

    Durations (keys ending ``_seconds``) in whole seconds with thousands separators (``1,851``),
    everything else as :func:`fmt` writes a cell. JSON and CSV files keep the raw numbers.
    """
    if key.endswith("_seconds") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return fmt(round(v))
    return fmt(v)


def seconds(v: Any) -> str:
    """A duration for a reader: whole seconds as :func:`headline` writes them (``1,851 s``), and minutes or
    hours beside them when long."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
        return "–"
    text = f"{fmt(round(v))} s"
    if v >= 2 * 3600:
        return f"{text} ({v / 3600:.1f} h)"
    if v >= 90:
        return f"{text} ({v / 60:.1f} min)"
    return text


# The heading of a report's table of results, one measured value a row.
METRIC_COLUMNS = ("metric", "value")


def far_caveat(summary: dict, prefix: str = "") -> str | None:
    """Why TAR @ FAR = 1e-3 is the TAR at FAR = 0 when a face run's test pairs cannot resolve FAR = 1e-3
    (``tar_at_far_1e-3_resolved`` false in its summary); None when they can. The one wording of the console,
    the reports and the comparison. ``prefix``: ``backbone_`` for the backbone's figures."""
    if summary.get(f"{prefix}tar_at_far_1e-3_resolved") is not False:
        return None
    n, same = summary.get("num_test_pairs"), summary.get("num_test_pairs_same")
    count = f"{n - same:,}" if isinstance(n, int) and isinstance(same, int) else "fewer than 1,000"
    return (f"FAR = 1e-3 cannot be resolved with {count} different-people test pairs (it needs "
            "at least 1,000), so TAR @ FAR = 1e-3 is the TAR at FAR = 0")


def config_table(cfg: Any) -> Table:
    """A run's options as the report's Configuration table: a field that is None where None means auto
    (its metadata says ``auto``) shows as ``auto``, as its ``--help`` and ``config.yaml`` accept it."""
    rows = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        rows.append([f.name, "auto" if v is None and f.metadata.get("auto") else str(v)])
    return Table(["option", "value"], rows)


def provenance(summary: dict, study: str, report_command: str | None, writer: str) -> Section:
    """Where and how a run was trained, and the commands that trained it and wrote this report.

    ``study`` is ``cifar`` or ``faces``; ``writer`` names the function that wrote the report,
    said instead of a command when it was called from Python.
    """
    where = summary.get("device", "an unrecorded device")
    precision = summary.get("precision")
    how = f"in {precision}" + (" with channels-last memory" if summary.get("channels_last") else "") \
        if precision else "in an unrecorded precision"
    procs = summary.get("world_size") or 1
    lines = [f"Trained on **{where}** {how}"
             + (f", {procs} processes" if procs > 1 else "")
             + (f"; torch {summary['torch']}, cnnlab {summary['cnnlab']}" if summary.get("torch") else "") + "."]
    trained_by = summary.get("command")
    if trained_by:
        lines.append(f"Trained by `{trained_by}`.")
    else:
        lines.append(f"The training command was not recorded (a run trained from Python or by an older cnnlab); "
                     f"`cnnlab {study} train --config config.yaml` repeats the run's options.")
    lines.append(f"This report: `{report_command}`." if report_command else f"This report: `{writer}` (Python).")
    return Section("How this was made", "\n\n".join(lines))


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _md(section: Section, root: Path) -> str:
    out = [f"## {section.title}", ""]
    if section.text:
        out += [section.text, ""]
    for item in section.items:
        if isinstance(item, Table):
            if item.caption:
                out += [f"*{item.caption}*", ""]
            out += [markdown_table(item.columns, item.rows), ""]
        elif isinstance(item, Figure):
            rel = Path(item.path).resolve().relative_to(root.resolve()) if _inside(item.path, root) else item.path
            out += [f"![{item.caption}]({Path(rel).as_posix()})", ""]
            if item.caption:
                out += [f"*{item.caption}*", ""]
        else:
            out += ["```", str(item).rstrip(), "```", ""]
    return "\n".join(out)


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _inline_md(text: str) -> str:
    """The little Markdown the reports use in prose: **bold**, `code`, paragraphs."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return "".join(f"<p>{p.strip()}</p>" for p in re.split(r"\n\s*\n", t) if p.strip())


def _html(section: Section) -> str:
    out = [f"<section><h2>{html.escape(section.title)}</h2>"]
    if section.text:
        out.append(_inline_md(section.text))
    figures: list[str] = []

    def flush():
        if figures:
            out.append('<div class="figures">' + "".join(figures) + "</div>")
            figures.clear()

    for item in section.items:
        if isinstance(item, Figure):
            data = base64.b64encode(Path(item.path).read_bytes()).decode()
            cap = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
            cls = ' class="wide"' if item.is_wide() else ""
            figures.append(f'<figure{cls}><img alt="{html.escape(item.caption)}" src="data:image/png;base64,{data}">'
                           f"{cap}</figure>")
            continue
        flush()
        if isinstance(item, Table):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in item.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in item.rows)
            cap = f"<caption>{html.escape(item.caption)}</caption>" if item.caption else ""
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            out.append(f"<pre>{html.escape(str(item))}</pre>")
    flush()
    out.append("</section>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2rem auto;
padding:0 1.5rem;color:#1f2328;line-height:1.5}
h1{font-size:1.8rem;border-bottom:1px solid #d0d7de;padding-bottom:.4rem}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #eaeef2;padding-bottom:.3rem}
table{border-collapse:collapse;margin:1rem 0;font-variant-numeric:tabular-nums;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.35rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f6f8fa}
tbody tr:nth-child(even){background:#fafbfc}
caption{caption-side:top;text-align:left;color:#57606a;padding-bottom:.3rem}
.figures{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;flex:1 1 420px;max-width:100%}
figure.wide{flex-basis:100%}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2;border-radius:4px}
figcaption{color:#57606a;font-size:.88rem;margin-top:.3rem}
pre{background:#f6f8fa;padding:.8rem;border-radius:6px;overflow-x:auto;font-size:.85rem}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}
.meta{color:#57606a;font-size:.9rem}
"""


def write_report(folder: str | Path, title: str, sections: list[Section], intro: str = "",
                 stem: str = "report") -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` into ``folder``."""
    folder = Path(folder)
    md = [f"# {title}", ""]
    if intro:
        md += [intro, ""]
    md += [_md(s, folder) for s in sections]
    md_path, html_path = folder / f"{stem}.md", folder / f"{stem}.html"
    atomic_write_text(md_path, "\n".join(md).rstrip() + "\n")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{_inline_md(intro) if intro else ''}"
            + "\n".join(_html(s) for s in sections) + "</body></html>\n")
    atomic_write_text(html_path, page)
    return md_path, html_path
