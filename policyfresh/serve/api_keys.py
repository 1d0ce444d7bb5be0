"""API keys of the search service, the classifications each may read and its rate. They come
from `POLICYFRESH_API_KEYS` or `<home>/api_keys.json`, never from the repository, and are kept
out of `Settings`, whose repr goes into logs and the refresh record."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policyfresh.serve.trace_store import trace_secret
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.errors import ConfigError

ENVIRONMENT = "POLICYFRESH_API_KEYS"
KEYS_FILE = "api_keys.json"
MIN_KEY_LENGTH = 16
GRANT_FIELDS = ("classifications", "rate", "burst")


def key_id(secret: bytes, key: str) -> str:
    """What traces and logs record of a key: an HMAC keyed by the home's secret, never the key,
    so that a guessed key cannot be confirmed against the lake (a plain hash could)."""
    return hmac.new(secret, b"api key\0" + key.encode(), hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True)
class Grant:
    """What one key may do: read these classifications, `rate` requests a second on average
    and up to `burst` at once."""

    key_id: str
    classifications: frozenset[str]
    rate: float
    burst: int


@dataclass(frozen=True)
class ApiKeys:
    grants: dict[str, Grant]
    source: str

    def grant(self, key: str) -> Grant | None:
        """The key's grant, or None for an unknown key. Every known key is compared in constant
        time, so the time taken says nothing about which one is close."""
        found = None
        for known, grant in self.grants.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = grant
        return found


def keys_file(settings: Settings) -> Path:
    return settings.home / KEYS_FILE


def load_api_keys(settings: Settings) -> ApiKeys:
    """The keys from the environment, else from the file under the home; an error that names
    the source and the problem (never a key) when they are missing or malformed."""
    text, source = os.environ.get(ENVIRONMENT), f"${ENVIRONMENT}"
    if not text:
        path = keys_file(settings)
        if not path.exists():
            raise ConfigError(
                f"no API keys: set {ENVIRONMENT} or write {path}, a JSON object from each key "
                'to the classifications it may read, e.g. {"KEY": ["public", "internal"]}'
            )
        text, source = path.read_text(encoding="utf-8"), str(path)
    return parse_api_keys(settings, text, source)


def parse_api_keys(settings: Settings, text: str, source: str) -> ApiKeys:
    """Keys from JSON: each key maps to a list of classifications, or to
    `{"classifications": [...], "rate": R, "burst": B}`; a missing rate or burst is the
    service's default (`POLICYFRESH_SERVE_RATE`, `POLICYFRESH_SERVE_BURST`)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: must be a non-empty JSON object from key to classifications")
    secret = trace_secret(settings).read_bytes()
    grants = {}
    for number, (key, entry) in enumerate(raw.items(), start=1):
        ident = key_id(secret, str(key))
        where = f"{source}: key {number} ({ident})"
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{where}: a key must be at least {MIN_KEY_LENGTH} characters")
        grants[key] = _grant(where, ident, entry, settings)
    return ApiKeys(grants, source)


def _grant(where: str, ident: str, entry: Any, settings: Settings) -> Grant:
    fields = entry if isinstance(entry, dict) else {"classifications": entry}
    unknown_fields = sorted(set(fields) - set(GRANT_FIELDS))
    if unknown_fields:
        raise ConfigError(f"{where}: unknown {unknown_fields}; a grant has {GRANT_FIELDS}")
    classifications = fields.get("classifications")
    if not isinstance(classifications, list) or not classifications:
        raise ConfigError(f"{where}: must map to a non-empty list of classifications")
    unknown = sorted(set(map(str, classifications)) - set(CLASSIFICATIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown {unknown}; classifications: {CLASSIFICATIONS}")
    rate = fields.get("rate", settings.service.rate)
    burst = fields.get("burst", settings.service.burst)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
        raise ConfigError(f"{where}: rate must be a number of requests a second above 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(f"{where}: burst must be a whole number of requests, at least 1")
    return Grant(ident, frozenset(classifications), float(rate), burst)
