import json

import pytest

from policyfresh.serve.api_keys import key_id, keys_file, load_api_keys
from policyfresh.store.errors import ConfigError

PUBLIC = "public-reader-key-0001"
WIDE = "wide-reader-key-000002"


def test_keys_come_from_the_environment_before_the_file(settings, monkeypatch):
    keys_file(settings).parent.mkdir(parents=True)
    keys_file(settings).write_text(json.dumps({WIDE: ["public", "internal"]}))
    assert load_api_keys(settings).entitlement(WIDE) == {"public", "internal"}
    monkeypatch.setenv("POLICYFRESH_API_KEYS", json.dumps({PUBLIC: ["public"]}))
    keys = load_api_keys(settings)
    assert keys.source == "$POLICYFRESH_API_KEYS"
    assert keys.entitlement(PUBLIC) == {"public"}
    assert keys.entitlement(WIDE) is None and keys.entitlement("") is None


def test_no_keys_is_an_error_that_says_where_to_put_them(settings):
    with pytest.raises(ConfigError, match=r"set POLICYFRESH_API_KEYS or write .*api_keys.json"):
        load_api_keys(settings)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ("[]", "non-empty JSON object"),
        (json.dumps({"short-secret": ["public"]}), "at least 16 characters"),
        (json.dumps({PUBLIC: []}), "non-empty list of classifications"),
        (json.dumps({PUBLIC: ["public", "top-secret"]}), r"unknown \['top-secret'\]"),
    ],
)
def test_a_malformed_grant_names_the_source_and_problem_never_the_key(
    settings, monkeypatch, text, problem
):
    monkeypatch.setenv("POLICYFRESH_API_KEYS", text)
    with pytest.raises(ConfigError, match=problem) as raised:
        load_api_keys(settings)
    assert "$POLICYFRESH_API_KEYS" in str(raised.value)
    assert PUBLIC not in str(raised.value) and "short-secret" not in str(raised.value)


def test_a_key_is_identified_by_a_hash_prefix():
    assert key_id(PUBLIC) == key_id(PUBLIC) != key_id(WIDE)
    assert len(key_id(PUBLIC)) == 12 and PUBLIC not in key_id(PUBLIC)
