"""HTML of the reports: an executed notebook rendered without its code, and the index page of all reports."""
from __future__ import annotations

import html
import json
from pathlib import Path

from lib import paths

__all__ = ["render_html", "write_index", "heading_anchor", "findings_rows"]

FINDING_KEYS = ("question", "finding", "control", "figure")


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


def heading_anchor(heading: str) -> str:
    """The id nbconvert gives a markdown heading (spaces become hyphens), for a link into a report.

    >>> heading_anchor("Probes by layer, with their controls")
    'Probes-by-layer,-with-their-controls'
    """
    return "-".join(str(heading).strip().split())


def findings_rows(manifest: dict) -> list[str]:
    """Table rows of a manifest's ``findings`` (question, finding, control, figure heading), linked to the report.

    >>> m = {"stem": "03_x", "run": "default", "report": "reports/03_x--default.html",
    ...      "findings": [{"question": "Q?", "finding": "0.9 [0.8, 1.0]", "control": "0.25", "figure": "A plot"}]}
    >>> "03_x--default.html#A-plot" in findings_rows(m)[0]
    True
    """
    href = Path(manifest["report"]).name
    rows = []
    for f in manifest.get("findings") or []:
        missing = [k for k in FINDING_KEYS if k not in f]
        if missing:
            raise ValueError(f"finding of {manifest['stem']} ({manifest['run']}) lacks {missing}; "
                             f"a finding has keys {list(FINDING_KEYS)}")
        link = f"{href}#{heading_anchor(f['figure'])}"
        rows.append(f"<tr><td>{html.escape(f['question'])}</td><td>{html.escape(f['finding'])}</td>"
                    f"<td>{html.escape(f['control'])}</td><td><a href='{html.escape(link)}'>"
                    f"{html.escape(f['figure'])}</a><br><small>{html.escape(manifest['stem'])} "
                    f"({html.escape(manifest['run'])})</small></td></tr>")
    return rows


def write_index() -> Path:
    """``reports/index.html``: the findings of every report first (question, held-out answer, control, figure),
    then every report with its summary, when and from what it was made."""
    manifests = [json.loads(path.read_text()) for path in sorted(paths.RESULTS.glob("[0-9][0-9]_*/*/manifest.json"))]
    rows = [_index_row(m) for m in manifests]
    found = [row for m in manifests for row in findings_rows(m)]
    findings = ("<h2>Findings</h2><p>Each answer is estimated on rows that did not choose or fit it, beside a "
                "control that could have failed; intervals are 95%. The link opens the figure in its report.</p>"
                "<table><tr><th>Question</th><th>Held-out answer</th><th>Control</th><th>Figure</th></tr>"
                + "".join(found) + "</table><h2>Reports</h2>") if found else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Emotion circuits: reports</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.5em;text-align:left;vertical-align:top}}
th{{background:#f5f5f5}}code{{font-size:.9em}}</style></head><body>
<h1>Emotion circuits: reports</h1>
<p>Made by <code>make reproduce</code>. Each phase's artifacts and manifest are in <code>results/&lt;phase&gt;/&lt;run&gt;/</code>.</p>
{findings}<table><tr><th>Phase</th><th>Run</th><th>Summary</th><th>Models</th><th>Made</th><th>From</th></tr>
{''.join(rows) or '<tr><td colspan=6>No reports yet.</td></tr>'}</table></body></html>"""
    paths.REPORTS.mkdir(exist_ok=True)
    target = paths.REPORTS / "index.html"
    target.write_text(page, encoding="utf-8")
    return target
