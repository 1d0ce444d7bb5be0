"""API keys of the search service and the classifications each may read. They come from
`POLICYFRESH_API_KEYS` or `<home>/api_keys.json`, never from the repository, and are kept out of
`Settings`, whose repr goes into logs and the refresh record."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.errors import ConfigError

ENVIRONMENT = "POLICYFRESH_API_KEYS"
KEYS_FILE = "api_keys.json"
MIN_KEY_LENGTH = 16


def key_id(key: str) -> str:
    """What traces and logs record of a key: a prefix of its hash, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ApiKeys:
    grants: dict[str, frozenset[str]]
    source: str

    def entitlement(self, key: str) -> frozenset[str] | None:
        """The classifications a key may read, or None for an unknown key. Every known key is
        compared in constant time, so the time taken says nothing about which one is close."""
        found = None
        for known, classifications in self.grants.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = classifications
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
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: must be a non-empty JSON object from key to classifications")
    grants = {}
    for number, (key, classifications) in enumerate(raw.items(), start=1):
        where = f"{source}: key {number} ({key_id(str(key))})"
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{where}: a key must be at least {MIN_KEY_LENGTH} characters")
        if not isinstance(classifications, list) or not classifications:
            raise ConfigError(f"{where}: must map to a non-empty list of classifications")
        unknown = sorted(set(map(str, classifications)) - set(CLASSIFICATIONS))
        if unknown:
            raise ConfigError(f"{where}: unknown {unknown}; classifications: {CLASSIFICATIONS}")
        grants[key] = frozenset(classifications)
    return ApiKeys(grants, source)
