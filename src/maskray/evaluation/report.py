"""A static HTML report: one self-contained file (pictures embedded), readable with no server."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from maskray.provenance import atomic_write_text

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:80%}
.note{color:#555}"""


class HtmlReport:
    """Collects headings, text, tables and pictures; :meth:`save` writes one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self._parts.append(f"<p{c}>{html.escape(text)}</p>")

    def image(self, path: str | os.PathLike, caption: str = "") -> None:
        """Embed a PNG file as base64, so the page stands alone."""
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">{cap}</figure>')

    def table(self, header: list[str], rows: list[list], caption: str = "") -> None:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.4g}"
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")

    def json_block(self, title: str, obj) -> None:
        self._parts.append(f"<details><summary>{html.escape(title)}</summary><pre>"
                           f"{html.escape(json.dumps(obj, indent=2, default=str))}</pre></details>")

    def save(self, path: str | os.PathLike) -> Path:
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self._parts)}</body></html>")
        atomic_write_text(path, page)
        return Path(path)
