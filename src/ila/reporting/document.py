"""A small report document (sections of text, tables, figures, code), as markdown or HTML.

One document renders to both formats, so report.md and report.html always say the same.
The HTML page is self-contained: CSS inline, figures embedded as base64 PNG data URIs, no
script and no external URL, so it opens from a file in any browser without a server.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Code", "Document", "Figure", "Section", "Table", "to_html", "to_markdown"]


@dataclass
class Table:
    """A table; ``numeric`` columns are right-aligned."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool] | None = None


@dataclass
class Figure:
    """A PNG file (name relative to the report's directory) and its caption."""

    file: str
    caption: str


@dataclass
class Code:
    """Preformatted text (a command line)."""

    text: str


Block = str | Table | Figure | Code


@dataclass
class Section:
    """A titled section; ``anchor`` is its HTML id."""

    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section]


def to_markdown(doc: Document) -> str:
    """The document as GitHub markdown; figures are links to the PNG files beside it."""
    lines = [f"# {doc.title}", ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _markdown_table(block)
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}]({block.file})")
            elif isinstance(block, Code):
                lines += ["```", block.text, "```"]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _markdown_table(table: Table) -> list[str]:
    numeric = table.numeric or [False] * len(table.header)
    align = "|" + "".join("---:|" if n else "---|" for n in numeric)

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [row(table.header), align, *(row(r) for r in table.rows)]


_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif;
  margin: 0 auto; max-width: 1100px; padding: 1.5em 2em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #3b6ea8; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #24476b; }
nav { font-size: .9em; margin-bottom: 1em; }
nav a { margin-right: 1em; color: #3b6ea8; text-decoration: none; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; display: block;
  max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; }
th { background: #f0f3f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: .8em 0; }
figure img { max-width: 100%; border: 1px solid #e5e5e5; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f6f8fa; padding: .7em 1em; overflow-x: auto; border-radius: 4px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .9em; }
"""


def to_html(doc: Document, image_dir: Path) -> str:
    """The document as one HTML page; figures are read from ``image_dir`` and embedded."""
    esc = html.escape
    body = [f"<h1>{esc(doc.title)}</h1>", "<nav>"]
    body += [f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in doc.sections]
    body.append("</nav>")
    for section in doc.sections:
        body.append(f'<section id="{section.anchor}">')
        body.append(f"<h2>{esc(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                body.append(_html_table(block))
            elif isinstance(block, Figure):
                data = base64.b64encode((Path(image_dir) / block.file).read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Code):
                body.append(f"<pre><code>{esc(block.text)}</code></pre>")
            else:
                body.append(f"<p>{_inline(block)}</p>")
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(doc.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _inline(text: str) -> str:
    """Escape text and turn markdown `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(table: Table) -> str:
    numeric = table.numeric or [False] * len(table.header)
    head = "".join(f"<th>{_inline(h)}</th>" for h in table.header)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{_inline(c)}</td>' if n else f"<td>{_inline(c)}</td>"
            for c, n in zip(row, numeric, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
