"""MkDocs hooks: the reference pages that are generated from the code, so they cannot drift.

- The command line: one page per command of `policyfresh.cli.parser.build_parser()` (usage,
  description, every option with its help), added as files on `on_files` and to the nav on
  `on_config`, and the global options and the command list on `reference/cli/index.md`.
- The tables: the key and columns of every Delta table of `policyfresh.store.tables` and of the
  LanceDB table of `policyfresh.index.vectors`, on `reference/tables.md`.
- The expectation suites: every `expectations/*.json` in words, on `reference/checks.md`.
- A page that generates one table or suite must generate them all: one left out is a warning.
- The configuration page is written by hand; a `POLICYFRESH_` variable that the code reads and the
  page does not name (or the other way round) is a warning, which fails `mkdocs build --strict`.

A page asks for generated text with a marker line: `<!-- generated: cli -->`,
`<!-- generated: table policy_documents -->`, `<!-- generated: suite policy_chunks -->`.
Nothing generated is written into the checkout.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path

import grimp
import pyarrow as pa
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File

from policyfresh.cli.parser import build_parser
from policyfresh.layers import LAYERS

log = get_plugin_logger("policyfresh_docs")

REPO = Path(__file__).resolve().parents[1]
CLI_DIR = "reference/cli"
CLI_INDEX = f"{CLI_DIR}/index.md"
MARKER = re.compile(r"^<!-- generated: ([a-z]+)(?: ([a-z_]+))? -->$", re.MULTILINE)
VARIABLE = re.compile(r"\bPOLICYFRESH_[A-Z0-9_]*[A-Z0-9]\b")
# Where the code reads its settings: the core, the Dagster layer and the deployment files.
SETTINGS_SOURCES = ("policyfresh/**/*.py", "orchestration/**/*.py", "assets/**/*.py", "deploy/*")
# The LanceDB table's own columns; the others are described in `policy_chunks`.
VECTOR_COLUMNS = {
    "model_id": "Model that embedded the row: its name and a hash of its weights and config",
    "vector": "The embedding of embed_text (384 dimensions for the bundled model), unit norm",
    "embedded_at": "When the row's vector was computed",
}
BUNDLED_DIMENSIONS = 384
# Arguments the parser gives no help for yet.
FALLBACK_HELP = {
    "--json": "print JSON instead of text",
    "trace_id": "the id a search printed with its answer",
}
# The how-to page that explains a command, when there is one.
SEE_ALSO = {
    "run": ("Quickstart", "../../quickstart.md"),
    "eval": ("Golden cases and the gate", "../../howto/golden-cases.md"),
    "releases": ("Releases and rollback", "../../howto/releases-and-rollback.md"),
    "rollback": ("Releases and rollback", "../../howto/releases-and-rollback.md"),
    "purge": ("Erasure and retention", "../../howto/erasure.md"),
    "impact": ("Answers a change made wrong", "../../howto/impact.md"),
    "search": ("Search and receipts", "../../concepts/search.md"),
    "trace": ("Search and receipts", "../../concepts/search.md"),
    "status": ("Run and status output", "../output.md"),
    "report": ("Reports for data owners", "../../concepts/reports.md"),
    "serve": ("The search service and API keys", "../../howto/search-service.md"),
    "dev": ("Sensors and freshness", "../../concepts/sensors-and-freshness.md"),
}


# --- the command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = build_parser()
    _fixed_width(parser)
    return parser


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    """Usage lines wrapped the same way whatever terminal builds the site."""
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    for sub in _commands(parser).values():
        sub.formatter_class = parser.formatter_class


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(_subparsers(parser).choices)


def _command_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.help or "" for a in _subparsers(parser)._choices_actions}


def _options_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| argument | what |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            takes = action.nargs != 0
            if takes:
                value = action.metavar or action.dest.upper()
                name += f" [{value}]" if action.nargs == "?" else f" {value}"
        else:
            name = action.metavar or action.dest
            if action.nargs in ("?", "*"):
                name = f"[{name}{' ...' if action.nargs == '*' else ''}]"
        key = action.option_strings[-1] if action.option_strings else action.dest
        what = _cell(action.help or FALLBACK_HELP.get(key, ""))
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and "default" not in what.lower() and action.option_strings:
            what += f" (default: `{action.default}`)"
        rows.append(f"| `{name}` | {what} |")
    if len(rows) == 2:
        return "No arguments."
    return "\n".join(rows)


def _usage(parser: argparse.ArgumentParser) -> str:
    return parser.format_usage().removeprefix("usage: ").strip()


def command_page(name: str, sub: argparse.ArgumentParser, summary: str) -> str:
    description = sub.description or summary
    title, link = SEE_ALSO.get(name, ("The command line", "index.md"))
    return "\n\n".join([
        f"# policyfresh {name}",
        description[:1].upper() + description[1:] + ".",
        f"```text\n{_usage(sub)}\n```",
        "## Arguments",
        _options_table(sub),
        "Global options (`--home`, `--policies`, `-v`) go before the command and exit codes are "
        "the same for every command: see [the command line](index.md). More on this command: "
        f"[{title}]({link}).",
        "*Generated from `policyfresh.cli.parser.build_parser()` when the site is built.*",
    ]) + "\n"  # fmt: skip


def cli_index() -> str:
    parser = _parser()
    summaries = _command_help(parser)
    commands = ["| command | what |", "|---|---|"]
    for name in _commands(parser):
        commands.append(f"| [`policyfresh {name}`]({name}.md) | {_cell(summaries.get(name, ''))} |")
    return "\n\n".join([
        f"```text\n{_usage(parser)}\n```",
        parser.description or "",
        "## Global options",
        _options_table(parser),
        "## Commands",
        "\n".join(commands),
    ])  # fmt: skip


# --- the tables --------------------------------------------------------------------------------


def _type(dtype: pa.DataType) -> str:
    """A short, readable name for an Arrow type."""
    if pa.types.is_timestamp(dtype):
        return f"timestamp ({dtype.tz})" if dtype.tz else "timestamp"
    if pa.types.is_fixed_size_list(dtype):
        return f"{_type(dtype.value_type)}[{dtype.list_size}]"
    if pa.types.is_list(dtype):
        return f"list<{_type(dtype.value_type)}>"
    if pa.types.is_map(dtype):
        return f"map<{_type(dtype.key_type)}, {_type(dtype.item_type)}>"
    if pa.types.is_struct(dtype):
        fields = ", ".join(f"{f.name}: {_type(f.type)}" for f in dtype)
        return f"struct<{fields}>"
    return {"bool": "boolean", "float": "float32", "double": "float64"}.get(str(dtype), str(dtype))


def _meta(field: pa.Field, key: str) -> str:
    return (field.metadata or {}).get(key.encode(), b"").decode()


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: no column break, no HTML tag (`<TYPE>`)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _columns(schema: pa.Schema, copied_from: pa.Schema | None = None) -> str:
    """A column table; a column without metadata takes it from `copied_from`, else from
    VECTOR_COLUMNS."""
    rows = ["| column | type | PII | what |", "|---|---|---|---|"]
    for field in schema:
        source = field
        copied = copied_from is not None and field.name in copied_from.names
        if copied and not _meta(field, "description"):
            source = copied_from.field(field.name)
        what = _meta(source, "description") or VECTOR_COLUMNS.get(field.name, "")
        if not what:
            log.warning(f"tables: column {field.name!r} has no description")
        pii = _meta(source, "pii") or "none"
        rows.append(f"| `{field.name}` | `{_type(field.type)}` | {pii} | {_cell(what)} |")
    return "\n".join(rows)


def _tables() -> dict:
    """Every table the docs describe, by name: the governed Delta tables, the writer leases
    and the LanceDB table (a schema of its own)."""
    from policyfresh.store.tables import TABLES, VECTORS, WRITER_LEASES

    return {**TABLES, WRITER_LEASES.name: WRITER_LEASES, VECTORS: None}


def table_reference(name: str) -> str:
    """The key, owner and columns of one table."""
    from policyfresh.store.tables import POLICY_CHUNKS

    table = _tables().get(name)
    if table is not None:
        key = ", ".join(f"`{k}`" for k in table.key)
        return "\n\n".join([
            f"*{table.description}* Delta table `{table.name}`, key {key}, owner `{table.owner}`.",
            _columns(table.schema),
        ])  # fmt: skip
    from policyfresh.index.vectors import vector_schema

    return "\n\n".join([
        f"LanceDB table `{name}`, key `chunk_id` (declared as the table's unenforced primary key); "
        "the chunk columns are `policy_chunks`' own.",
        _columns(vector_schema(BUNDLED_DIMENSIONS), copied_from=POLICY_CHUNKS.schema),
    ])  # fmt: skip


# --- the expectation suites -------------------------------------------------------------------


def _value(value) -> str:
    if isinstance(value, dict) and "$PARAMETER" in value:
        return f"the configured model's `{value['$PARAMETER']}`"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _expectation(expectation: dict) -> str:
    kwargs = dict(expectation["kwargs"])
    condition = kwargs.pop("row_condition", None)
    where = []
    if "column" in kwargs:
        where.append(f"column `{kwargs.pop('column')}`")
    if "column_list" in kwargs:
        where.append(f"columns {_value(kwargs.pop('column_list'))}")
    if "column_A" in kwargs:
        where.append(f"`{kwargs.pop('column_A')}` over `{kwargs.pop('column_B')}`")
    details = [f"{k.replace('_', ' ')} {_value(v)}" for k, v in sorted(kwargs.items())]
    if condition and condition.get("type") == "nullity":
        nullity = "is null" if condition.get("is_null") else "is not null"
        details.append(f"where `{condition['column']['name']}` {nullity}")
    line = f"- `{expectation['type']}`: " + "; ".join(where + details)
    notes = (expectation.get("meta") or {}).get("notes")
    return line + (f". *{notes}*" if notes else "")


def _suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted((REPO / "expectations").glob("*.json"))}


def suite_reference(name: str) -> str:
    """One expectation suite, as a list in words."""
    path = _suites()[name]
    suite = json.loads(path.read_text(encoding="utf-8"))
    notes = (suite.get("meta") or {}).get("notes", "")
    lines = [_expectation(e) for e in suite["expectations"]]
    count = len(lines)
    return f"`expectations/{path.name}`, {count} expectations. {notes}\n\n" + "\n".join(lines)


# --- the configuration -------------------------------------------------------------------------


def variables_in_code() -> set[str]:
    found = set()
    for pattern in SETTINGS_SOURCES:
        for path in REPO.glob(pattern):
            if path.is_file():
                found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def check_configuration(markdown: str) -> None:
    in_code, on_page = variables_in_code(), set(VARIABLE.findall(markdown))
    for name in sorted(in_code - on_page):
        log.warning(f"configuration: {name} is read by the code but not documented")
    for name in sorted(on_page - in_code):
        log.warning(f"configuration: {name} is documented but the code never reads it")


# --- MkDocs events -----------------------------------------------------------------------------

# name -> (the function that writes the section, the names it must cover on its page)
# --- the import graph --------------------------------------------------------------------------


def import_graph() -> str:
    """The core's layers from the top down as grimp finds them: each layer's modules and the
    layers it imports. An arrow to a layer above is a fault (`tests/test_architecture.py`)."""
    graph = grimp.build_graph("policyfresh", include_external_packages=False)
    lines = ["```text"]
    for layer in reversed(LAYERS):
        package = f"policyfresh.{layer}"
        modules = sorted(m.rsplit(".", 1)[1] for m in graph.find_children(package))
        below = sorted(
            {
                imported.split(".")[1]
                for m in graph.find_descendants(package)
                for imported in graph.find_modules_directly_imported_by(m)
                if imported.split(".")[1] != layer and imported.split(".")[1] in LAYERS
            },
            key=LAYERS.index,
            reverse=True,
        )
        lines.append(f"policyfresh/{layer}/  ->  {', '.join(below) or '(nothing)'}")
        lines += [f"    {line}" for line in textwrap.wrap(", ".join(modules), 90)]
    return "\n".join([*lines, "```"])


GENERATORS = {
    "graph": (lambda _: import_graph(), None),
    "cli": (lambda _: cli_index(), None),
    "table": (table_reference, _tables),
    "suite": (suite_reference, _suites),
}


def on_config(config):
    """List every command's page under the nav entry that holds the command line's index."""
    pages = [f"{CLI_DIR}/{name}.md" for name in _commands(_parser())]

    def extend(items) -> bool:
        for item in items or []:
            children = next(iter(item.values())) if isinstance(item, dict) else None
            if isinstance(children, list):
                if CLI_INDEX in children:
                    children.extend(p for p in pages if p not in children)
                    return True
                if extend(children):
                    return True
        return False

    if config.nav and not extend(config.nav):
        log.warning(f"nav: no section lists {CLI_INDEX}; the command pages are not in the nav")
    return config


def on_files(files, config):
    parser = _parser()
    summaries = _command_help(parser)
    for name, sub in _commands(parser).items():
        page = command_page(name, sub, summaries.get(name, ""))
        files.append(File.generated(config, f"{CLI_DIR}/{name}.md", content=page))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "reference/configuration.md":
        check_configuration(markdown)
    used: dict[str, set[str]] = {}

    def generate(match: re.Match) -> str:
        kind, argument = match[1], match[2]
        if kind not in GENERATORS:
            log.warning(f"{page.file.src_uri}: unknown generated section {kind!r}")
            return match[0]
        write, known = GENERATORS[kind]
        if known is not None and argument not in known():
            log.warning(f"{page.file.src_uri}: no {kind} named {argument!r}")
            return match[0]
        used.setdefault(kind, set()).add(argument)
        return write(argument)

    markdown = MARKER.sub(generate, markdown)
    for kind, names in used.items():
        known = GENERATORS[kind][1]
        missing = sorted(set(known()) - names) if known else []
        if missing:
            log.warning(f"{page.file.src_uri}: no section for the {kind}s {missing}")
    return markdown
