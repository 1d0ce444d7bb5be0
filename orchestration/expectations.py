"""The GX-to-asset-check bridge: each suite in `expectations/` becomes a blocking check on the
table asset of the same name, so bad data stops before it is chunked or embedded."""

import dagster as dg

from orchestration.resources import RagfreshResource
from ragfresh.expectations import SUITES, load_suite, suite_path, validate_table
from ragfresh.tables import TABLES, TableDef


def expectation_check(table: TableDef) -> dg.AssetChecksDefinition:
    """A blocking asset check that validates the whole table against its suite."""
    path = suite_path(table.name)
    suite = load_suite(path)

    @dg.asset_check(
        asset=table.name,
        name="expectations",
        blocking=True,
        description=f"Great Expectations suite {path.parent.name}/{path.name} "
        f"({len(suite['expectations'])} expectations).",
    )
    def check(ragfresh: RagfreshResource) -> dg.AssetCheckResult:
        checked = validate_table(ragfresh.settings(), table, suite)
        result = checked.validation
        return dg.AssetCheckResult(
            passed=result.success,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"table version {checked.table_version} did not move since it was validated: "
                "result reused"
                if checked.reused
                else None
            ),
            metadata={
                "rows": checked.rows,
                "table_version": checked.table_version,
                "reused": checked.reused,
                "expectations": result.evaluated,
                "failed": len(result.failures),
                "failures": dg.MetadataValue.json(result.failures),
            },
        )

    return check


def expectation_checks() -> list[dg.AssetChecksDefinition]:
    """One check per suite file; a suite named after no table is a definition error."""
    checks = []
    for path in sorted(SUITES.glob("*.json")):
        if path.stem not in TABLES:
            raise ValueError(f"{path}: no table named {path.stem!r} (one of {sorted(TABLES)})")
        checks.append(expectation_check(TABLES[path.stem]))
    return checks
