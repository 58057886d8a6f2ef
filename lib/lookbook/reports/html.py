"""Self-contained HTML report pages."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd


def write_html(out_html: str | Path, title: str, sections: list[tuple[str, object]]) -> Path:
    """A page: each section is (heading, PNG path | DataFrame | text). PNGs are referenced by
    name, so they must sit beside the page (or be given relative to it)."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, pd.DataFrame):
            parts.append(content.to_html(index=False, escape=True))
        elif isinstance(content, Path):
            # An absolute path is a file beside the page; a relative one is kept as given.
            src = content.name if content.is_absolute() else content.as_posix()
            parts.append(f"<img src='{html.escape(src)}' style='max-width:100%'>")
        else:
            parts.append(f"<pre>{html.escape(str(content))}</pre>")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text("\n".join(parts))
    return out_html
