"""`dvc plots show` without a network: an HTML page template with Vega, Vega-Lite and vega-embed inlined.

DVC's default page loads the three libraries from a CDN, so it is blank offline. DVC fills a template's
`{plot_divs}` (each plot: a div and a `vegaEmbed(...)` call) and its `{scripts}` (the CDN tags); this template has
the libraries inlined from the `vl-convert-python` package (`vl_convert.javascript_bundle()`, which sets
`window.vegaEmbed`) and no `{scripts}`, so the page makes no request. `.dvc/config` names it
(`plots.html_template`); `make install` writes it (`sonotune plots-template`).
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_FILE = Path(".dvc") / "plots_offline.html"  # .dvc/config: [plots] html_template = plots_offline.html
VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite v5 specs
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots (offline)</title>
    <script>
__BUNDLE__
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    """The page, with vega-embed, Vega-Lite and Vega inlined (about 1 MB); DVC substitutes its placeholders."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    placeholders = [p for p in ("{plot_divs}", "{scripts}", "{refresh_tag}") if p in bundle]
    if placeholders:  # DVC replaces them literally anywhere in the page
        raise RuntimeError(f"vl_convert's bundle contains DVC's placeholder {placeholders[0]}: not usable as is")
    return PAGE.replace("__BUNDLE__", bundle.replace("</script", "<\\/script"))


def write_template(path: Path = TEMPLATE_FILE) -> Path:
    """Write the template (atomically: a half-written page would break `dvc plots show`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(offline_template(), encoding="utf8")
    partial.replace(path)
    return path
