"""Rendering the report: the HTML page and the Markdown file, written into one folder.

The output folder holds ``index.html``, ``report.md`` and one PNG per plot. Both pages
refer to the PNGs by relative path rather than inlining them as base64, so Markdown
viewers show the same plots and the folder stays self-contained when moved as a whole.
Every file is first written into a staging folder inside the output folder and then
renamed into place, the HTML page last, so a failing run leaves an earlier report intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ReportError
from ..files import check_target
from .inputs import locate
from .plots import PLOT_FILES
from .sections import Section, Table, build_sections


def status_table(sections: list[Section]) -> Table:
    """What was rendered from which file, and what to run for the rest."""
    rows = [[s.title, "rendered", ", ".join(f"`{p}`" for p in s.sources)] if s.measured
            else [s.title, "not measured", f"run `{s.command}`"] for s in sections]
    return Table("Sections", ["section", "status", "source"], rows, text_columns=3)


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232b;
       background: #f4f6f8; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 36px 0 8px; padding-top: 12px; border-top: 1px solid #dde2e8; font-size: 21px; }
p.meta { color: #5b6573; margin: 0 0 16px; }
figure { margin: 12px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e7ec; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e6e9ee; text-align: left;
         vertical-align: top; }
th { background: #eef1f5; }
td:not(:last-child) { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
code { background: #eef1f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
p.missing { color: #7a4b00; background: #fff6e0; border-left: 4px solid #e0a100;
            padding: 8px 12px; }
"""


def _inline(parent: ET.Element, text: str) -> None:
    """Append ``text`` to ``parent``, its backquoted parts as ``<code>``."""
    parts = text.split("`")
    last = None
    for i, part in enumerate(parts):
        if i % 2:
            last = ET.SubElement(parent, "code")
            last.text = part
        elif last is None:
            parent.text = (parent.text or "") + part
        else:
            last.tail = part


def _html_table(parent: ET.Element, table: Table) -> None:
    el = ET.SubElement(parent, "table")
    ET.SubElement(el, "caption").text = table.caption
    row = ET.SubElement(ET.SubElement(el, "thead"), "tr")
    for i, name in enumerate(table.header):
        ET.SubElement(row, "th", {"class": "num"} if i >= table.text_columns else {}).text = name
    body = ET.SubElement(el, "tbody")
    for cells in table.rows:
        row = ET.SubElement(body, "tr")
        for i, cell in enumerate(cells):
            _inline(ET.SubElement(row, "td", {"class": "num"} if i >= table.text_columns
                                  else {}), cell)


def render_html(sections: list[Section], generated: str, results: Path) -> str:
    """The report page; plots are ``<figure class="plot" id="plot-<section>">``."""
    html = ET.Element("html", lang="en")
    head = ET.SubElement(html, "head")
    ET.SubElement(head, "meta", charset="utf-8")
    ET.SubElement(head, "title").text = "VELCRO report"
    ET.SubElement(head, "style").text = CSS
    main = ET.SubElement(ET.SubElement(html, "body"), "main")
    ET.SubElement(main, "h1").text = "VELCRO report"
    _inline(ET.SubElement(main, "p", {"class": "meta"}),
            f"Generated {generated} from the results in `{results}`.")
    _html_table(main, status_table(sections))
    for s in sections:
        box = ET.SubElement(main, "section", id=s.key)
        ET.SubElement(box, "h2").text = s.title
        if not s.measured:
            _inline(ET.SubElement(box, "p", {"class": "missing"}),
                    f"Not measured — run `{s.command}`.")
            continue
        for text in s.text:
            _inline(ET.SubElement(box, "p"), text)
        if s.plot is not None:
            figure = ET.SubElement(box, "figure", {"class": "plot", "id": f"plot-{s.key}"})
            ET.SubElement(figure, "img", src=s.plot.file, alt=s.plot.alt)
        for table in s.tables:
            _html_table(box, table)
    return "<!DOCTYPE html>\n" + ET.tostring(html, encoding="unicode", method="html") + "\n"


def _md_table(table: Table) -> list[str]:
    def row(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---" if i < table.text_columns else "---:" for i in range(len(table.header))]
    return [f"**{table.caption}**", "", row(table.header), row(rule),
            *(row(cells) for cells in table.rows), ""]


def render_markdown(sections: list[Section], generated: str, results: Path) -> str:
    """The same content as :func:`render_html`, as Markdown."""
    lines = ["# VELCRO report", "", f"Generated {generated} from the results in `{results}`.",
             "", *_md_table(status_table(sections))]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if not s.measured:
            lines += [f"> Not measured — run `{s.command}`.", ""]
            continue
        for text in s.text:
            lines += [text, ""]
        if s.plot is not None:
            lines += [f"![{s.plot.alt}]({s.plot.file})", ""]
        for table in s.tables:
            lines += _md_table(table)
    return "\n".join(lines)


def write_report(sections: list[Section], out: Path, results: Path) -> list[Path]:
    """Draw the plots and write ``index.html`` and ``report.md`` into ``out``.

    Returns the files written, the page first. Everything is written into a staging
    folder inside ``out`` and renamed into place, the page last; plots of sections
    not measured this time are removed afterwards.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        plots = [s.plot for s in sections if s.measured and s.plot is not None]
        for plot in plots:
            plot.draw(stage / plot.file)
        (stage / "report.md").write_text(render_markdown(sections, generated, results))
        (stage / "index.html").write_text(render_html(sections, generated, results))
        names = [p.file for p in plots] + ["report.md", "index.html"]
        for name in names:
            check_target(out / name)
        for name in names:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    drawn = {p.file for p in plots}
    for name in PLOT_FILES.values():
        if name not in drawn:
            (out / name).unlink(missing_ok=True)
    return [out / name for name in reversed(names)]


def report(results: Path, out: Path, given: dict[str, Path | None] | None = None
           ) -> tuple[list[Section], list[Path]]:
    """Build the report of the result files in ``results`` (or ``given``) into ``out``."""
    sections = build_sections(locate(results, given or {}), results)
    return sections, write_report(sections, out, results)
