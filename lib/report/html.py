"""HTML of the reports: an executed notebook rendered without its code, and the index page of all reports."""
from __future__ import annotations

import html
import json
from pathlib import Path

from lib import paths

__all__ = ["render_html", "write_index"]


def render_html(executed: Path, target: Path, title: str) -> None:
    """Self-contained HTML of an executed notebook, code hidden (plotly.js is inlined by the renderer)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(target)


def _index_row(m: dict) -> str:
    commit = (m.get("git") or {}).get("commit") or "uncommitted"
    dirty = " (with local changes)" if (m.get("git") or {}).get("dirty") else ""
    models = ", ".join(x.get("name", "?") for x in m.get("models", [])) or "-"
    href = Path(m["report"]).name
    return (f"<tr><td><a href='{html.escape(href)}'>{html.escape(m['stem'])}</a></td>"
            f"<td>{html.escape(m['run'])}</td><td>{html.escape(m.get('summary', ''))}</td>"
            f"<td>{html.escape(models)}</td><td>{html.escape(m['started'])}<br>{m['wall_s']} s</td>"
            f"<td><code>{commit[:10]}</code>{dirty}<br><code>params/{html.escape(m['stem'])}.yaml</code>"
            f"{'' if m['run'] == 'default' else ' + <code>params/' + html.escape(m['run']) + '.yaml</code>'}"
            f"</td></tr>")


def write_index() -> Path:
    """``reports/index.html``: every report with its summary, when and from what it was made."""
    rows = [_index_row(json.loads(path.read_text())) for path in sorted(paths.RESULTS.glob("*/*/manifest.json"))]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Emotion circuits: reports</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}}
th{{background:#f5f5f5}}code{{font-size:.9em}}</style></head><body>
<h1>Emotion circuits: reports</h1>
<p>Made by <code>make reproduce</code>. Each phase's artifacts and manifest are in <code>results/&lt;phase&gt;/&lt;run&gt;/</code>.</p>
<table><tr><th>Phase</th><th>Run</th><th>Summary</th><th>Models</th><th>Made</th><th>From</th></tr>
{''.join(rows) or '<tr><td colspan=6>No reports yet.</td></tr>'}</table></body></html>"""
    paths.REPORTS.mkdir(exist_ok=True)
    target = paths.REPORTS / "index.html"
    target.write_text(page, encoding="utf-8")
    return target
