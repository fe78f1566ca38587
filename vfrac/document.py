"""Numbers and documents as vfrac prints them: one CI, one p-value, one Markdown and one HTML writer.

A document is a list of blocks: ("h1", text), ("h2", text), ("p", text), ("img", path, alt),
("table", header, rows), ("figures", caption, [img blocks]) and ("group", css class,
[blocks]); h2, p, img and table take a dict of HTML attributes last ({"class": "note"}).
The study report, the validation report, the model card, the review page and a
prediction's sheet are written as blocks and rendered by `to_markdown` and `to_html`.
"""

from __future__ import annotations

import math
from html import escape

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:1.5em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;"
         "padding:2px 6px}img{max-width:100%;height:auto;display:block;margin:.5em 0}")


def number_text(value, digits: int = 2) -> str:
    """A number to `digits` decimals; "n/a" for None or NaN, "" for an empty cell."""
    if value == "":
        return ""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def ci_text(value, interval=None) -> str:
    """"0.85 (0.71-0.93)", or "-0.10 (-0.34 to 0.12)" when the interval starts below zero (a range from a
    negative number read as "-0.34--0.12"); the value alone without an interval; "n/a" without a value."""
    text = number_text(value)
    if text == "n/a" or not interval:
        return text
    low, high = interval
    separator = " to " if low < 0 else "-"
    return f"{text} ({low:.2f}{separator}{high:.2f})"


def p_text(p: float) -> str:
    """A p-value in a table cell: "0.012", or "<0.001"."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: float) -> str:
    """A p-value in a sentence: "p = 0.012", or "p < 0.001"."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def to_markdown(blocks) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "figures":
            lines += [block[1], "", to_markdown(block[2])]
        elif kind == "group":
            lines.append(to_markdown(block[2]))
        else:
            header, rows = block[1], block[2]
            lines += ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]
    return "\n".join(lines)


def to_html(blocks, title: str = "vfrac report", style: str = "", script: str = "") -> str:
    """A self-contained page: `style` adds to the house style, `script` (HTML) goes at the end of the body."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}{style}</style></head><body>\n" + html_body(blocks) + script + "</body></html>\n")


def html_body(blocks) -> str:
    parts = []
    for block in blocks:
        kind, extra = block[0], _attributes(block)
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}{extra}>{escape(block[1])}</{kind}>")
        elif kind == "img":
            parts.append(f"<img src='{escape(block[1])}' alt='{escape(block[2])}'{extra}>")
        elif kind == "figures":
            parts.append(f"<div class='figures'><p>{escape(block[1])}</p>"
                         + "".join(html_body([image]) for image in block[2]) + "</div>")
        elif kind == "group":
            parts.append(f"<div class='{escape(block[1])}'>{html_body(block[2])}</div>")
        else:
            parts.append(f"<table{extra}><tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in block[1]) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                                   for row in block[2]) + "</table>")
    return "\n".join(parts)


ARITY = {"h1": 2, "h2": 2, "p": 2, "img": 3, "table": 3}


def _attributes(block) -> str:
    """The HTML attributes of a block that carries a dict of them after its usual fields ({"class": "note"})."""
    if len(block) <= ARITY.get(block[0], len(block)):
        return ""
    return "".join(f" {escape(name)}='{escape(str(value))}'" for name, value in block[-1].items())
