import json
import re
import shutil
import time

import jinja2
import polars as pl
import pytest

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import read_chunks, refresh_chunks
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.quality.table_checks import table_rows, validate_table
from policyfresh.serve.search import search_many
from policyfresh.store import data_docs
from policyfresh.store.config import Settings
from policyfresh.store.suites import (
    MAX_FAILED_ROWS,
    ROW_KEYS,
    SUITES,
    data_docs_dir,
    load_suite,
    render_suite,
    suite_parameters,
    suite_path,
    validate,
)
from policyfresh.store.tables import POLICY_DOCUMENTS, TABLES, VECTORS
from tests.conftest import BUNDLED, BUNDLED_GOLDEN, SMALL, keep_only
from tests.offline import open_offline, row_text

SUITE_NAMES = [
    "answer_impact", "eval_case_results", "ingest_errors", "policy_chunks", "policy_documents",
    "policy_vectors",
]  # fmt: skip


def test_every_suite_is_named_after_its_table_and_stored_as_gx_rebuilds_it():
    assert sorted(p.stem for p in SUITES.glob("*.json")) == SUITE_NAMES
    for name in SUITE_NAMES:
        path = suite_path(name)
        assert load_suite(path)["name"] == name
        # `python -m policyfresh.store.suites` rewrites them; a rebuild changes no byte
        assert render_suite(load_suite(path)) == path.read_text(encoding="utf-8")


def test_each_delta_suite_expects_exactly_its_tables_columns():
    for name in set(SUITE_NAMES) & set(TABLES):
        [columns] = [
            e for e in load_suite(suite_path(name))["expectations"]
            if e["type"] == "expect_table_columns_to_match_set"
        ]  # fmt: skip
        assert columns["kwargs"]["column_set"] == TABLES[name].schema.names


def test_a_suite_gx_cannot_read_is_rejected_when_rendered():
    bad = {"name": "x", "expectations": [{"type": "expect_column_to_be_nice", "kwargs": {}}]}
    with pytest.raises(ValueError, match="suite x: GX cannot read expect_column_to_be_nice"):
        render_suite(bad)


def test_real_tables_pass_their_suites(settings, corpus, embedder, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_PII_RULES", "restricted=block")
    settings = type(settings).load()
    ingest_documents(settings, run_id="r1")
    (corpus / "hr" / "remote-work.md").unlink()
    ingest_documents(settings, run_id="r2")  # a tombstone: no text, no hash, no size
    assert refresh_chunks(settings, Chunker.for_model(embedder), run_id="r1").blocked > 0
    documents = read_documents(settings, current_only=False)
    assert documents["is_deleted"].any()
    suite = load_suite(suite_path("policy_documents"))
    result = validate(documents, suite, POLICY_DOCUMENTS.key)
    assert result.success and result.evaluated == len(suite["expectations"]), result.failures
    chunks = validate(read_chunks(settings), load_suite(suite_path("policy_chunks")), ("chunk_id",))
    assert chunks.success, chunks.failures


def test_a_bad_table_fails_naming_its_rows_by_key_and_never_their_values(settings):
    ingest_documents(settings, run_id="r1")
    documents = read_documents(settings, current_only=False)
    planted = documents.head(1).with_columns(classification=pl.lit("jane.doe@example.com"))
    bad = pl.concat([documents, planted])
    result = validate(bad, load_suite(suite_path("policy_documents")), POLICY_DOCUMENTS.key)
    assert not result.success
    failed = {(f["expectation"], str(f["column"])) for f in result.failures}
    assert ("expect_column_values_to_be_in_set", "classification") in failed
    assert ("expect_compound_columns_to_be_unique", "['doc_id', 'doc_version']") in failed
    wrong = next(f for f in result.failures if f["column"] == "classification")
    row = planted.row(0, named=True)
    assert wrong["unexpected_count"] == 1
    assert wrong["rows"] == [{"doc_id": row["doc_id"], "doc_version": row["doc_version"]}]
    assert "jane.doe" not in json.dumps(result.failures)


def test_failing_rows_are_capped_per_expectation(settings):
    ingest_documents(settings, run_id="r1")
    documents = read_documents(settings, current_only=False)
    many = pl.concat([documents.with_columns(doc_version=pl.lit(v)) for v in range(1, 4)])
    bad = many.with_columns(classification=pl.lit("secret"))
    result = validate(bad, load_suite(suite_path("policy_documents")), POLICY_DOCUMENTS.key)
    wrong = next(f for f in result.failures if f["column"] == "classification")
    assert wrong["unexpected_count"] == bad.height > MAX_FAILED_ROWS
    assert len(wrong["rows"]) == MAX_FAILED_ROWS


def _compiled_during(monkeypatch: pytest.MonkeyPatch, build) -> list[str]:
    """The named templates jinja2 compiles while `build` runs (unnamed ones are GX's one-off
    string templates)."""
    compiled = []
    compile_template = jinja2.Environment.compile

    def counted(self, source, name=None, *args, **kwargs):
        compiled.append(name)
        return compile_template(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counted)
    build()
    monkeypatch.setattr(jinja2.Environment, "compile", compile_template)
    return [name for name in compiled if name]


def test_data_docs_builds_compile_their_page_templates_once(settings, monkeypatch):
    """GX makes a new template environment for each page it renders; compiling its templates
    again was most of a check's Data Docs build. Compiled templates are kept, and the warm run
    worker compiles them all before it forks, so a run's first build compiles none."""
    ingest_documents(settings, run_id="r1")
    documents = read_documents(settings, current_only=False)
    suite = load_suite(suite_path("policy_documents"))
    monkeypatch.setattr(data_docs.COMPILED, "code", {})

    def build():
        validate(documents, suite, POLICY_DOCUMENTS.key, docs=settings)

    assert _compiled_during(monkeypatch, build), "the first build compiles"
    assert _compiled_during(monkeypatch, build) == []
    monkeypatch.setattr(data_docs.COMPILED, "code", {})
    assert len(_compiled_during(monkeypatch, data_docs.compile_templates)) > 40
    assert _compiled_during(monkeypatch, build) == []
    assert (data_docs_dir(settings) / "index.html").is_file()


def test_a_table_s_data_docs_build_renders_its_own_pages_and_the_index_only(settings, embedder):
    """Each check publishes its table's result; GX would render every table's pages again."""
    ingest_documents(settings, run_id="r1")
    refresh_chunks(settings, Chunker.for_model(embedder), run_id="r1")
    tables = {name: table_rows(settings, name) for name in ("policy_documents", "policy_chunks")}
    for name, rows in tables.items():
        validate(rows, load_suite(suite_path(name)), ROW_KEYS[name], docs=settings)
    site = data_docs_dir(settings)
    documents = [*(site / "validations" / "policy_documents").rglob("*.html"),
                 site / "expectations" / "policy_documents.html"]  # fmt: skip
    written = {page: page.stat().st_mtime_ns for page in [*documents, site / "index.html"]}
    time.sleep(0.01)
    validate(tables["policy_chunks"], load_suite(suite_path("policy_chunks")),
             ROW_KEYS["policy_chunks"], docs=settings)  # fmt: skip
    assert {page: page.stat().st_mtime_ns for page in documents} == {
        page: written[page] for page in documents
    }
    assert (site / "index.html").stat().st_mtime_ns > written[site / "index.html"]
    assert "policy_documents" in (site / "index.html").read_text()


def test_a_suite_without_expectations_is_rejected(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="needs a `name` and a list of `expectations`"):
        load_suite(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder):
    """The small corpus refreshed end to end, with one file that cannot be ingested."""
    root = tmp_path_factory.mktemp("built")
    shutil.copytree(BUNDLED, root / "policies")
    keep_only(root / "policies", SMALL)
    (root / "policies" / "retail" / "broken.pdf").write_bytes(b"%PDF-1.4 cut short")
    settings = Settings.load(home=root / "home", policies=root / "policies", golden=BUNDLED_GOLDEN)
    refresh(settings, embedder, "build")
    # An answer quoting the overdraft fee, then an edit of that fee: the answer is affected
    search_many(settings, embedder, ["What is the daily overdraft fee?"], k=5, caller="assistant")
    fees = root / "policies" / "retail" / "overdraft-fees.md"
    fees.write_text(fees.read_text().replace("$", "USD "))
    assert refresh(settings, embedder, "edit")["impact"]["answers"] == 1
    return settings


def test_every_table_of_a_real_refresh_passes_its_suite(built, embedder):
    parameters = suite_parameters(embedder.model_id, embedder.dimensions)
    for name in SUITE_NAMES:
        frame = table_rows(built, name)
        assert frame.height > 0, name
        result = validate(frame, load_suite(suite_path(name)), ROW_KEYS[name], parameters)
        assert result.success, (name, result.failures)


PLANTED = "jane.doe@example.com"
BAD_ROWS = [  # table, the key column given a new value, the column made bad, its bad value
    ("policy_documents", "doc_id", "classification", PLANTED),
    ("ingest_errors", "path", "reason", None),
    ("policy_chunks", "chunk_id", "token_count", 0),
    ("eval_case_results", "case_id", "status", PLANTED),
    (VECTORS, "chunk_id", "norm", 2.0),
    (VECTORS, "chunk_id", "finite", False),
    (VECTORS, "chunk_id", "model_id", "another-model@384"),
    (VECTORS, "chunk_id", "dimensions", 383),
]


@pytest.mark.parametrize(("table", "key", "column", "value"), BAD_ROWS)
def test_each_suite_fails_on_a_planted_bad_row_and_names_it(
    built, embedder, table, key, column, value
):
    frame = table_rows(built, table)
    planted = frame.head(1).with_columns(
        pl.lit("planted", frame.schema[key]).alias(key),
        pl.lit(value, frame.schema[column]).alias(column),
    )
    parameters = suite_parameters(embedder.model_id, embedder.dimensions)
    result = validate(
        pl.concat([frame, planted]), load_suite(suite_path(table)), ROW_KEYS[table], parameters
    )
    assert not result.success and result.failing_rows == 1
    [failure] = [f for f in result.failures if f["column"] == column]
    assert failure["rows"] == [{k: planted[k][0] for k in ROW_KEYS[table]}]
    assert PLANTED not in json.dumps(result.failures)


def test_data_docs_work_offline_and_tell_no_one(built, embedder, page, screenshots):
    """Every Data Docs page loads its styles, scripts and fonts from the home: with the network
    blocked no request leaves, none fails, no script errs, and each table shows its rows."""
    parameters = suite_parameters(embedder.model_id, embedder.dimensions)
    suites = {name: load_suite(suite_path(name)) for name in SUITE_NAMES}
    for name, suite in suites.items():
        assert not validate_table(built, name, suite, parameters).reused
    site = data_docs_dir(built)
    pages = sorted(site.rglob("*.html"))
    # no CDN, no logo from the vendor's bucket, no newsletter or how-to link
    assert not [p for p in pages if re.search(r"https?://", p.read_text())]

    def visit(path, shot):
        visited = open_offline(page, path)
        assert (visited.remote, visited.failed, page.console_errors) == ([], [], []), path
        page.screenshot(path=str(screenshots / f"{shot}.png"), full_page=True)

    visit(site / "index.html", "index")
    for name in SUITE_NAMES:  # the validation results tab lists every table's latest result
        assert name in row_text(page, "table", name)
    for name, suite in suites.items():
        [result] = (site / "validations" / name).rglob("*.html")
        visit(result, f"validation-{name}")
        evaluated = row_text(page, "table", "Evaluated Expectations")
        assert evaluated.split() == ["Evaluated", "Expectations", str(len(suite["expectations"]))]
        assert "Must have exactly these columns" in row_text(page, "table", "these columns")
        visit(site / "expectations" / f"{name}.html", f"suite-{name}")
        assert row_text(page, "table", "Expectation Suite Name").split()[-1] == name
        assert page.get_by_text("Must have exactly these columns").first.is_visible()
