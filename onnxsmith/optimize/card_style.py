"""The evidence card's inline stylesheet (kept apart from the renderer so each stays readable)."""

CSS = """
:root { --ok: #1a7f37; --fail: #cf222e; --muted: #57606a; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0 auto;
       max-width: 1440px; padding: 24px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 6px; }
.verdict { padding: 10px 14px; border-radius: 6px; font-weight: 600; }
.verdict.ok { background: #dafbe1; border: 1px solid var(--ok); }
.verdict.fail { background: #ffebe9; border: 1px solid var(--fail); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; font-size: 12.5px; }
th, td { border: 1px solid var(--line); padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: var(--bg); }
td:first-child, th:first-child, #steps td:nth-child(2), #steps td:nth-child(3), #steps td:nth-child(4) { text-align: left; }
tr.status-chosen td { background: #dafbe1; font-weight: 600; }
tr.status-failed td { color: var(--fail); }
.tag { font-size: 11px; padding: 1px 6px; border-radius: 10px; border: 1px solid var(--line); font-weight: 600; }
.tag.status-chosen { color: var(--ok); border-color: var(--ok); }
.tag.status-rejected { color: var(--muted); }
.tag.status-failed { color: var(--fail); border-color: var(--fail); }
ul.reasons { padding-left: 18px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; }
.plots figure { border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
.plots svg { max-width: 560px; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
section.step { border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
section.step.status-chosen { border-color: var(--ok); }
section.step ul { margin: 4px 0 8px; padding-left: 18px; }
.examples { display: flex; flex-wrap: wrap; gap: 12px; }
.example-card { width: 150px; }
.example-card img { width: 128px; height: auto; image-rendering: pixelated; border: 2px solid var(--line); }
.example-card.wrong img { border-color: var(--fail); }
details pre { background: var(--bg); padding: 8px; overflow-x: auto; font-size: 11px; max-height: 320px; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
"""
