import pytest

from policyfresh.ingest.governance import (
    Governance,
    load_owner_rules,
    parse_owner_rules,
    resolve_governance,
)
from policyfresh.ingest.parsing import ParseError
from tests.conftest import BUNDLED

RULES_TEXT = """
# comment
retail/overdraft.md   team:fees  ops@bank.com   classification=public
retail/**             team:retail
hr/**                 classification=confidential
hr/**                 team:hr classification=internal
"""


def rules():
    parsed, errors = parse_owner_rules(RULES_TEXT)
    assert errors == []
    return parsed


def test_first_matching_rule_wins():
    gov = resolve_governance("retail/overdraft.md", {}, rules())
    assert gov == Governance(("team:fees", "ops@bank.com"), "public")
    assert resolve_governance("retail/cards.md", {}, rules()) == Governance(
        ("team:retail",), "internal"
    )


def test_owner_and_classification_resolve_field_by_field():
    assert resolve_governance("hr/leave.md", {}, rules()) == Governance(
        ("team:hr",), "confidential"
    )


def test_front_matter_wins_over_owners_file():
    gov = resolve_governance(
        "retail/cards.md", {"owner": ["team:cards"], "classification": "restricted"}, rules()
    )
    assert gov == Governance(("team:cards",), "restricted")


def test_unmatched_document_is_unowned_and_internal():
    assert resolve_governance("ops/bcp.txt", {}, rules()) == Governance((), "internal")


@pytest.mark.parametrize(
    ("front_matter", "reason"),
    [
        ({"owner": "Maria Okafor"}, "front matter: invalid owner \\(expected team:"),
        ({"owner": {"team": "Maria Okafor"}}, "must be a string or a list"),
        ({"classification": "Maria Okafor"}, "front matter: unknown classification \\(one of"),
    ],
)
def test_invalid_front_matter_governance_is_rejected_naming_the_field_not_the_value(
    front_matter, reason
):
    with pytest.raises(ParseError, match=reason) as raised:
        resolve_governance("a.md", front_matter, [])
    assert "Maria" not in str(raised.value)  # a reason reaches tables, logs and the CLI


def test_bad_owners_lines_are_reported_and_the_rest_apply():
    parsed, errors = parse_owner_rules(
        "a/** team:a\nb/** maria.okafor\nc/**\nd/** classification=okafor\n"
    )
    assert [r.pattern for r in parsed] == ["a/**"]
    assert errors == [
        "line 2: invalid owner (expected team:<name> or an email)",
        "line 3: a pattern with no owner and no classification",
        "line 4: unknown classification "
        "(one of ('public', 'internal', 'confidential', 'restricted'))",
    ]


def test_bundled_owners_file_parses_and_leaves_operations_unowned():
    parsed, errors = load_owner_rules(BUNDLED / "OWNERS")
    assert errors == [] and parsed
    assert resolve_governance("operations/business-continuity.txt", {}, parsed).owners == ()
