"""Write .dvc/plots/template.html: the page `dvc plots show` fills (.dvc/config: plots.html_template),
with the chart library (Vega, Vega-Lite, Vega-Embed) inlined from the installed vl-convert-python
package, so the plots render without network access. DVC's own page loads them from a CDN.

DVC inserts each chart as a <div> whose inline script calls vegaEmbed(id, spec) while the page
is parsed; the bundle is an ES module, which runs after parsing, so a stub queues those calls
and the module replays them.

Run: .venv/bin/python scripts/plots_template.py   (scripts/setup.sh does)
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / ".dvc" / "plots" / "template.html"
VEGA_LITE = "5.21"  # DVC's templates are Vega-Lite 5 specs

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  {refresh_tag}
  <title>localagg: DVC plots</title>
  <script>
    window.__vegaPending = [];
    window.vegaEmbed = function (id, spec) { window.__vegaPending.push([id, spec]); };
  </script>
  <script type="module">
BUNDLE
  </script>
  <style>
    body { font-family: sans-serif; margin: 16px; }
    body > div { display: inline-block; vertical-align: top; margin: 8px; }
  </style>
</head>
<body>
  <h1>localagg: DVC plots</h1>
  {plot_divs}
</body>
</html>
"""

REPLAY = ("const pending = window.__vegaPending || []; window.vegaEmbed = vegaEmbed; "
          "for (const [id, spec] of pending) vegaEmbed(id, spec);")


def main() -> int:
    import vl_convert

    bundle = vl_convert.javascript_bundle(REPLAY, vl_version=VEGA_LITE)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(PAGE.replace("BUNDLE", bundle))
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB, Vega-Lite {VEGA_LITE} from vl-convert-python)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
