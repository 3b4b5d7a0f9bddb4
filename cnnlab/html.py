"""The pieces of cnnlab's self-contained HTML pages (the run report, the sweep page) and of the objects a notebook
renders (`_repr_html_`): escaping, numbers, tables, embedded PNGs, the page around the sections, and its CSS.
A base module, so that every layer can render (the model summary's layer table is models' own).

A page is one file: images are base64 data: URIs, the CSS is inline, there is no JavaScript, and a
Content-Security-Policy forbids loading anything else, so it can be mailed or archived as it is. Every piece
of text goes through escape() (class names and paths come from the user's folders); table() takes cells that
are already HTML.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def escape(value: Any) -> str:
    """Text for HTML: &, <, >, and both quotes escaped."""
    return html.escape(str(value), quote=True)


def percent(value: Any) -> str:
    """0.873 -> '87.3%'; 'n/a' for anything that is not a finite number."""
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def number(value: Any, digits: int = 4) -> str:
    """A float with `digits` decimals, an int with thousands separators, anything else escaped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return escape(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None) -> str:
    """A table from already-escaped cell HTML; columns in `numeric` are right-aligned."""
    def cell(tag: str, i: int, text: str) -> str:
        return f'<{tag} class="num">{text}</{tag}>' if i in numeric else f"<{tag}>{text}</{tag}>"
    head = "".join(cell("th", i, escape(h)) for i, h in enumerate(headers))
    body = []
    for k, row in enumerate(rows):
        css = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        body.append(f"<tr{css}>" + "".join(cell("td", i, text) for i, text in enumerate(row)) + "</tr>")
    # wrapped so that a wide table (a long layer list, long file names) scrolls instead of widening the page
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure(path: Path, alt: str, caption: str = "", where: str = "the run folder") -> str:
    """A PNG file embedded as a data: URI (never a link), or a note that it is missing from `where`."""
    try:
        data = path.read_bytes()  # the bytes are embedded as they are, not decoded
    except OSError:
        data = b""
    if not data.startswith(PNG_SIGNATURE):
        return f'<p class="missing">{escape(path.name)} is missing from {escape(where)}.</p>'
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{escape(alt)}">{caption_html}</figure>'


def page(title: str, kicker: str, heading: str, subtitle: str, sections: list[tuple[str, str, str]],
         nav: dict[str, str], footer: str) -> str:
    """A whole page: <head> with the CSP and the CSS, a header (kicker, heading, subtitle, navigation), one
    <section id> with an <h2> per (id, heading, inner HTML) in `sections`, and the footer. `nav` gives each
    section's link text; `subtitle` and `footer` are HTML, the other strings text."""
    links = " ".join(f'<a href="#{id_}">{escape(nav[id_])}</a>' for id_, _, _ in sections)
    body = "\n".join(f'<section id="{id_}">\n<h2>{escape(title_)}</h2>\n{content}\n</section>'
                     for id_, title_, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<p class="kicker">{escape(kicker)}</p>
<h1>{escape(heading)}</h1>
<p class="muted">{subtitle}</p>
<nav>{links}</nav>
</header>
{body}
<footer>{footer}</footer>
</main>
</body>
</html>
"""


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f4; color: var(--fg);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 40px 48px; background: #fff; min-height: 100vh; }
header { border-bottom: 1px solid var(--line); padding-bottom: 12px; }
.kicker { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: .75rem; color: var(--muted); }
h1 { font-size: 1.8rem; margin: .1em 0 .1em; }
h2 { font-size: 1.35rem; margin: 1.8em 0 .6em; padding-bottom: .25em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4em 0 .5em; }
h4 { font-size: .95rem; margin: 1em 0 .3em; }
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: .9rem; }
nav a, details summary { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.muted, figcaption { color: var(--muted); font-size: .88rem; }
.missing { color: var(--muted); font-style: italic; background: var(--soft); padding: 10px 14px; border-radius: 6px; }
code { background: var(--soft); padding: 1px 5px; border-radius: 4px; font-size: .88em; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
.num { text-align: right; }
.scroll { overflow-x: auto; }
tr.best td, tr.flagged td { background: #fff8c5; }
figure { margin: 1em 0; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
details { margin: .5em 0 1em; }
.stack .verdict { margin: 0 0 10px; }
details summary { cursor: pointer; font-size: .9rem; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; margin-top: 10px; }
.fact { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.fact span { display: block; color: var(--muted); font-size: .78rem; }
.fact b { font-size: 1.1rem; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-weight: 600; font-size: .85rem;
         border: 1px solid; margin-right: 6px; }
.verdict { border: 1px solid; border-left-width: 6px; border-radius: 6px; padding: 6px 20px 10px; }
.verdict-name { font-weight: 700; font-size: 1.1rem; margin: .5em 0 0; }
.headline { font-size: 1.02rem; margin: .3em 0 .6em; }
.verdict ul, .verdict ol { margin: .2em 0 .6em; padding-left: 1.4em; }
.verdict-good_fit { border-color: #1a7f37; background: #dafbe1; }
.verdict-overfitting { border-color: #bc4c00; background: #fff1e5; }
.verdict-underfitting, .verdict-still_improving { border-color: #0969da; background: #ddf4ff; }
.verdict-plateau { border-color: #9a6700; background: #fff8c5; }
.verdict-diverging, .verdict-no_better_than_chance { border-color: #cf222e; background: #ffebe9; }
.verdict-too_few_val, .verdict-too_short { border-color: #8250df; background: #fbefff; }
footer { margin-top: 3em; padding-top: 10px; border-top: 1px solid var(--line); color: var(--muted);
         font-size: .82rem; }
"""
