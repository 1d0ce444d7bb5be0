"""The GX-to-asset-check bridge: each suite in `expectations/` becomes a blocking check on the
asset that writes its table, so bad data stops before it is chunked, embedded or served."""

import dagster as dg

from orchestration.resources import EmbedderResource, PolicyfreshResource
from policyfresh.quality.table_checks import TableValidation, table_fault, validate_table
from policyfresh.store.suites import SUITES, load_suite, suite_parameters, suite_path
from policyfresh.store.tables import EVAL_CASE_RESULTS, TABLES, VECTORS

# Tables written by an asset of another name.
WRITTEN_BY = {EVAL_CASE_RESULTS.name: "regression_eval"}


def expectation_check(table: str) -> dg.AssetChecksDefinition:
    """A blocking check that validates the whole table against its suite. It fails for a
    table-wide fault only; failing rows of a few documents hold those documents back."""
    path = suite_path(table)
    suite = load_suite(path)
    asset = WRITTEN_BY.get(table, table)

    @dg.asset_check(
        asset=asset,
        name="expectations" if asset == table else f"{table}_expectations",
        blocking=True,
        description=f"Great Expectations suite {path.parent.name}/{path.name} "
        f"({len(suite['expectations'])} expectations). Results in GX Data Docs under "
        "<home>/reports/data_docs.",
    )
    def check(policyfresh: PolicyfreshResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
        settings, model = policyfresh.settings(), embedder.embedder()
        checked = validate_table(
            settings, table, suite, suite_parameters(model.model_id, model.dimensions)
        )
        result, fault = checked.validation, table_fault(settings, table, checked)
        return dg.AssetCheckResult(
            passed=fault is None,
            severity=dg.AssetCheckSeverity.ERROR,
            description=_describe(fault, checked),
            metadata={
                "rows": checked.rows,
                "table_version": checked.table_version,
                "reused": checked.reused,
                "expectations": result.evaluated,
                "failed": len(result.failures),
                "failing_rows": result.failing_rows,
                "failures": dg.MetadataValue.json(result.failures),
            },
        )

    return check


def _describe(fault: str | None, checked: TableValidation) -> str | None:
    notes = [fault] if fault else []
    if not fault and checked.validation.failing_rows:
        notes.append(f"{checked.validation.failing_rows} failing rows: documents held back")
    if checked.reused:
        notes.append(f"version {checked.table_version} was validated before: result reused")
    return "; ".join(notes) or None


def expectation_checks() -> list[dg.AssetChecksDefinition]:
    """One check per suite file; a suite named after no table is a definition error."""
    tables = sorted({*TABLES, VECTORS})
    checks = []
    for path in sorted(SUITES.glob("*.json")):
        if path.stem not in tables:
            raise ValueError(f"{path}: no table named {path.stem!r} (one of {tables})")
        checks.append(expectation_check(path.stem))
    return checks
