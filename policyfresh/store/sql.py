"""SQL literals for the filters passed to Delta merges and LanceDB queries."""


def literal(value: str) -> str:
    """A single-quoted SQL string literal, quotes escaped."""
    return "'" + value.replace("'", "''") + "'"


def in_list(values: list[str]) -> str:
    """The inside of an `IN (...)` list of string literals."""
    return ", ".join(literal(v) for v in values)
