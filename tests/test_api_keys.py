import hashlib
import json

import pytest

from policyfresh.serve.api_keys import keys_file, load_api_keys
from policyfresh.store.config import Settings
from policyfresh.store.errors import ConfigError

PUBLIC = "public-reader-key-0001"
WIDE = "wide-reader-key-000002"


def test_keys_come_from_the_environment_before_the_file(settings, monkeypatch):
    keys_file(settings).parent.mkdir(parents=True)
    keys_file(settings).write_text(json.dumps({WIDE: ["public", "internal"]}))
    assert load_api_keys(settings).grant(WIDE).classifications == {"public", "internal"}
    monkeypatch.setenv("POLICYFRESH_API_KEYS", json.dumps({PUBLIC: ["public"]}))
    keys = load_api_keys(settings)
    assert keys.source == "$POLICYFRESH_API_KEYS"
    assert keys.grant(PUBLIC).classifications == {"public"}
    assert keys.grant(WIDE) is None and keys.grant("") is None


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
        (json.dumps({PUBLIC: {"classifications": ["public"], "rate": 0}}), "rate must be"),
        (json.dumps({PUBLIC: {"classifications": ["public"], "rate": "5"}}), "rate must be"),
        (json.dumps({PUBLIC: {"classifications": ["public"], "burst": 1.5}}), "burst must be"),
        (json.dumps({PUBLIC: {"classifications": ["public"], "limit": 3}}), r"unknown \['limit'\]"),
        (json.dumps({PUBLIC: {"rate": 3}}), "non-empty list of classifications"),
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


def test_a_key_has_its_own_rate_beside_its_classifications_or_the_default(settings, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_SERVE_RATE", "2.5")
    monkeypatch.setenv("POLICYFRESH_SERVE_BURST", "7")
    settings = Settings.load(home=settings.home)
    grants = {PUBLIC: ["public"], WIDE: {"classifications": ["internal"], "rate": 50, "burst": 80}}
    monkeypatch.setenv("POLICYFRESH_API_KEYS", json.dumps(grants))
    keys = load_api_keys(settings)
    assert (keys.grant(PUBLIC).rate, keys.grant(PUBLIC).burst) == (2.5, 7)
    assert keys.grant(WIDE).classifications == {"internal"}
    assert (keys.grant(WIDE).rate, keys.grant(WIDE).burst) == (50.0, 80)


def test_a_key_is_identified_by_an_hmac_keyed_by_the_home(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_API_KEYS", json.dumps({PUBLIC: ["public"], WIDE: ["public"]}))
    keys = load_api_keys(settings)
    ours = keys.grant(PUBLIC).key_id
    assert ours == load_api_keys(settings).grant(PUBLIC).key_id != keys.grant(WIDE).key_id
    assert len(ours) == 12 and PUBLIC not in ours
    assert ours != hashlib.sha256(PUBLIC.encode()).hexdigest()[:12], "a guess must not confirm"
    other = load_api_keys(Settings.load(home=tmp_path / "other"))
    assert other.grant(PUBLIC).key_id != ours
