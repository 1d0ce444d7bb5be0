"""Great Expectations Data Docs that work offline and tell no one: GX's page views with
templates (`templates/data_docs`) that load Bootstrap, jQuery, bootstrap-table, Font Awesome
and Vega from the site's own `static/vendor` folder, show no vendor logo, newsletter or how-to
link, and the copy of those files into the site. GX builds its views by module and class
name (see `policyfresh.store.suites`); importing this module imports GX."""

from __future__ import annotations

import filecmp
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView

TEMPLATES = Path(__file__).parent / "templates" / "data_docs"
VENDOR = Path(__file__).parent / "vendor"
STATIC = Path("static") / "vendor"  # under the site's root
REMOTE_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)")


def vendored_files() -> dict[str, Path]:
    """Each file the pages load, by its path under `static/vendor`, from the installed
    package that ships it (versions and licences: `policyfresh/store/vendor/README.md`)."""
    import js_lib_vega_embed
    from xstatic.pkg import bootstrap, bootstrap_datepicker, font_awesome, jquery

    vega = Path(js_lib_vega_embed.__file__).parent / "static" / "js_lib_vega_embed"
    boot, picker = Path(bootstrap.BASE_DIR), Path(bootstrap_datepicker.BASE_DIR)
    awesome = Path(font_awesome.BASE_DIR)
    files = {
        "bootstrap/bootstrap.min.css": boot / "css" / "bootstrap.min.css",
        "bootstrap/bootstrap.bundle.min.js": boot / "js" / "bootstrap.bundle.min.js",
        "jquery/jquery.min.js": Path(jquery.BASE_DIR) / "jquery.min.js",
        "bootstrap-datepicker/bootstrap-datepicker.js": picker / "bootstrap-datepicker.js",
        "bootstrap-datepicker/bootstrap-datepicker3.standalone.css": (
            picker / "bootstrap-datepicker3.standalone.css"
        ),
        "font-awesome/LICENSE.txt": awesome / "LICENSE.txt",
        "font-awesome/css/all.min.css": awesome / "css" / "all.min.css",
        **{f"font-awesome/webfonts/{p.name}": p for p in (awesome / "webfonts").iterdir()},
        "vega/vega5.js": vega / "vega5.js",
        "vega/vega-lite5.js": vega / "vega-lite5.js",
        "vega/vega-embed6.js": vega / "vega-embed6.js",
    }
    files |= {f"bootstrap-table/{p.name}": p for p in (VENDOR / "bootstrap-table").iterdir()}
    return files


def copy_vendored(site: Path) -> None:
    """Copy the vendored files into the site's `static/vendor`; unchanged files stay."""
    for name, source in vendored_files().items():
        target = site / STATIC / name
        if target.is_file() and filecmp.cmp(source, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


@jinja2.pass_context
def site_root(context: Any) -> str:
    """The relative path from the page being rendered to the site's root, where `static` is:
    a validation result sits 4 folders deep (suite, run, time, batch), a suite page 1, each
    plus one per dot in the suite's name."""
    renderer = context.get("renderer_type") or ""
    dots = (context.get("expectation_suite_name") or "").count(".")
    if "ValidationResults" in renderer or "ProfilingResults" in renderer:
        return "../" * (dots + 4)
    if "ExpectationSuite" in renderer:
        return "../" * (dots + 1)
    return ""


def local_only(css: str) -> str:
    """The stylesheet with every remote `url(...)` made `none`: GX's dark theme draws its logo
    from the vendor's bucket."""
    return REMOTE_URL.sub("none", css)


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates kept for the process, by template and source checksum: GX makes a
    new environment for each page it renders, and compiling the same templates again was most
    of a check's Data Docs build (0.27 of 0.4 s)."""

    def __init__(self) -> None:
        self.code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if bucket.key in self.code:
            bucket.bytecode_from_string(self.code[bucket.key])

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self.code[bucket.key] = bucket.bytecode_to_string()


COMPILED = _CompiledTemplates()


class _Offline:
    """Our templates first, GX's behind them; `site_root()` for the paths to static files and
    `local_only` for the stylesheets GX inlines; compiled templates shared by every view."""

    env: jinja2.Environment

    def __init__(self, custom_styles_directory=None, custom_views_directory=None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)  # type: ignore[call-arg]
        self.env.loader = jinja2.ChoiceLoader(
            [jinja2.FileSystemLoader(TEMPLATES), self.env.loader]  # type: ignore[list-item]
        )
        self.env.globals["site_root"] = site_root
        self.env.filters["local_only"] = local_only
        self.env.bytecode_cache = COMPILED


class OfflinePageView(_Offline, DefaultJinjaPageView):
    """A suite or validation result page."""


class OfflineIndexPageView(_Offline, DefaultJinjaIndexPageView):
    """The site's index page."""


def compile_templates() -> None:
    """Compile every template the pages use into COMPILED now (the warm run worker does, before
    it forks, so that no run compiles them)."""
    env = OfflinePageView().env
    for name in env.list_templates():
        env.get_template(name)
