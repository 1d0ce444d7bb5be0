"""Where policyfresh keeps its state and reads its policies: one home, every location a URI."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from policyfresh.store.errors import ConfigError

CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
PII_ALLOW_FILE = "PII_ALLOW"  # in the policies folder: terms the PII detector keeps verbatim
PII_ACTIONS = ("redact", "block", "allow")


def _parse_pii_rules(spec: str) -> dict[str, str]:
    """Parse `restricted=block,public=allow` into {classification: action}."""
    rules: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        classification, _, action = item.partition("=")
        if classification not in CLASSIFICATIONS or action not in PII_ACTIONS:
            raise ConfigError(
                f"invalid POLICYFRESH_PII_RULES item {item!r}: expected <classification>=<action>, "
                f"classification one of {CLASSIFICATIONS}, action one of {PII_ACTIONS}"
            )
        rules[classification] = action
    return rules


def _int_setting(name: str, default: int, minimum: int, why: str) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below {minimum}: {why}")
    return value


def _fraction_setting(name: str, default: float) -> float:
    raw = os.environ.get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} is not between 0 and 1")
    return value


def _rate_setting(name: str, default: float) -> float:
    raw = os.environ.get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={value} is not above 0")
    return value


TRUE = ("1", "true", "yes")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(name: str, raw: str) -> float:
    """Seconds from `90`, `90s`, `10m`, `1.5h` or `2d`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", raw)
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"{name}={raw!r} is not a positive duration such as 90s, 10m or 1h")
    return float(match[1]) * DURATION_UNITS[match[2] or "s"]


def freshness_slo() -> float:
    """The freshness objective in seconds: `POLICYFRESH_FRESHNESS_SLO`, default 10 minutes."""
    return parse_duration(
        "POLICYFRESH_FRESHNESS_SLO", os.environ.get("POLICYFRESH_FRESHNESS_SLO", "10m")
    )


def max_parse_seconds() -> float:
    """How long one file may take to parse: `POLICYFRESH_MAX_PARSE_SECONDS`, default 60 s."""
    raw = os.environ.get("POLICYFRESH_MAX_PARSE_SECONDS", "60")
    return parse_duration("POLICYFRESH_MAX_PARSE_SECONDS", raw)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _webhook_url(name: str, raw: str) -> str | None:
    """An https URL, or http to this machine only: the summary must not cross a network in
    clear text."""
    if not raw:
        return None
    url = urlsplit(raw)
    local = url.hostname in LOCAL_HOSTS
    if (url.scheme == "https" and url.hostname) or (url.scheme == "http" and local):
        return raw
    raise ConfigError(f"{name} must be an https URL, or http to 127.0.0.1 or localhost")


DEFAULT_GOLDEN = Path("evals") / "golden_cases.csv"


def _golden_path(golden: str | Path | None) -> Path | None:
    """The golden cases file: given, else `POLICYFRESH_GOLDEN_CASES`, else `evals/golden_cases.csv`
    if it exists. A file that was named but is missing is an error, not a silent skip."""
    named = golden or os.environ.get("POLICYFRESH_GOLDEN_CASES")
    if named == "none":
        return None
    if named:
        path = Path(named).resolve()
        if not path.is_file():
            raise ConfigError(f"golden cases file not found: {path}")
        return path
    return DEFAULT_GOLDEN.resolve() if DEFAULT_GOLDEN.is_file() else None


@dataclass(frozen=True)
class Gate:
    """What a candidate index must meet to be published (see the README for the reasoning)."""

    min_hit_at_5: float = 0.85
    min_evidence_recall_at_5: float = 0.7
    max_hit_at_5_drop: float = 0.02
    escalation_threshold: float = 0.42
    # How near the threshold a newly flipped escalation is noise: flips seen on 18F edits moved
    # 0.006 and 0.03 across it (docs/howto/golden-cases.md, the gate).
    escalation_margin: float = 0.05


@dataclass(frozen=True)
class ServiceLimits:
    """What `policyfresh serve` takes from a client before it refuses: one slow, greedy or
    malicious client must never starve the others (see the search service how-to)."""

    max_body_bytes: int = 65_536
    max_header_bytes: int = 16_384
    max_headers: int = 64
    read_timeout: float = 10.0  # seconds for a request's headers and body to arrive
    request_timeout: float = 30.0
    max_connections: int = 512
    max_queue: int = 64  # questions waiting to be encoded, traces waiting to be written
    rate: float = 10.0  # requests a second per API key, unless its grant says otherwise
    burst: int = 20

    @classmethod
    def load(cls) -> ServiceLimits:
        """The limits from `POLICYFRESH_SERVE_*` variables, else the defaults."""
        env = os.environ

        def seconds(name: str, default: float) -> float:
            return parse_duration(name, env.get(name, f"{default:g}s"))

        return cls(
            max_body_bytes=_int_setting(
                "POLICYFRESH_SERVE_MAX_BODY_BYTES", cls.max_body_bytes, 2, "a JSON object"
            ),
            max_header_bytes=_int_setting(
                "POLICYFRESH_SERVE_MAX_HEADER_BYTES", cls.max_header_bytes, 1024, "a request line"
            ),
            max_headers=_int_setting(
                "POLICYFRESH_SERVE_MAX_HEADERS", cls.max_headers, 4, "Host, Authorization, ..."
            ),
            read_timeout=seconds("POLICYFRESH_SERVE_READ_TIMEOUT", cls.read_timeout),
            request_timeout=seconds("POLICYFRESH_SERVE_REQUEST_TIMEOUT", cls.request_timeout),
            max_connections=_int_setting(
                "POLICYFRESH_SERVE_MAX_CONNECTIONS", cls.max_connections, 1, "a client"
            ),
            max_queue=_int_setting(
                "POLICYFRESH_SERVE_MAX_QUEUE", cls.max_queue, 1, "a question waits its turn"
            ),
            rate=_rate_setting("POLICYFRESH_SERVE_RATE", cls.rate),
            burst=_int_setting("POLICYFRESH_SERVE_BURST", cls.burst, 1, "a request takes one"),
        )


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one policyfresh deployment."""

    home: Path
    policies: Path
    lake_uri: str
    vectors_uri: str
    pii_rules: dict[str, str] = field(default_factory=dict)
    vector_index_min_rows: int = 10_000
    version_retention_days: int = 90
    trace_retention_days: int = 90
    golden_cases: Path | None = None
    gate: Gate = field(default_factory=Gate)
    judge_url: str | None = None
    judge_model: str | None = None
    freshness_slo: float = 600.0
    source_quiet_seconds: float = 2.0
    model_cache_dir: Path | None = None
    max_held_share: float = 0.25
    max_removed_share: float = 0.25
    max_file_bytes: int = 50_000_000
    allow_mass_delete: bool = False
    service: ServiceLimits = field(default_factory=ServiceLimits)
    # Where the impact of a publication is posted; out of repr: a URL may carry a token.
    impact_webhook: str | None = field(default=None, repr=False)

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def pii_allow_file(self) -> Path:
        """The deployment's PII allow list, beside its policies and OWNERS."""
        return self.policies / PII_ALLOW_FILE

    @property
    def model_cache(self) -> Path:
        """Where the model's ONNX export is kept (`POLICYFRESH_MODEL_CACHE` can share one)."""
        return self.model_cache_dir or self.home / "models"

    @property
    def reports_dir(self) -> Path:
        """Where the owners' reports and Data Docs are written."""
        return self.home / "reports"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @property
    def lake_is_local(self) -> bool:
        """True when the lake is on this machine's disk, not in object storage."""
        return self.lake_uri.startswith("file://") or "://" not in self.lake_uri

    def table_uri(self, name: str) -> str:
        return f"{self.lake_uri.rstrip('/')}/{name}"

    def pii_action(self, classification: str) -> str:
        return self.pii_rules.get(classification, "redact")

    @classmethod
    def load(
        cls,
        home: str | Path | None = None,
        policies: str | Path | None = None,
        golden: str | Path | None = None,
    ) -> Settings:
        """Settings from arguments, else `POLICYFRESH_*` environment variables, else defaults."""
        env = os.environ
        home_path = Path(home or env.get("POLICYFRESH_HOME") or ".policyfresh").resolve()
        policies_path = Path(policies or env.get("POLICYFRESH_POLICIES") or "policies").resolve()
        return cls(
            home=home_path,
            policies=policies_path,
            lake_uri=env.get("POLICYFRESH_LAKE_URI") or (home_path / "lake").as_uri(),
            vectors_uri=env.get("POLICYFRESH_VECTORS_URI") or str(home_path / "vectors"),
            pii_rules=_parse_pii_rules(env.get("POLICYFRESH_PII_RULES", "")),
            vector_index_min_rows=_int_setting(
                "POLICYFRESH_VECTOR_INDEX_MIN_ROWS", 10_000, 256, "IVF_PQ trains from 256 rows"
            ),
            version_retention_days=_int_setting(
                "POLICYFRESH_VERSION_RETENTION_DAYS", 90, 1, "traces replay old index versions"
            ),
            trace_retention_days=_int_setting(
                "POLICYFRESH_TRACE_RETENTION_DAYS", 90, 1, "a receipt must outlive its answer"
            ),
            golden_cases=_golden_path(golden),
            gate=Gate(
                min_hit_at_5=_fraction_setting("POLICYFRESH_GATE_MIN_HIT_AT_5", Gate.min_hit_at_5),
                min_evidence_recall_at_5=_fraction_setting(
                    "POLICYFRESH_GATE_MIN_EVIDENCE_RECALL", Gate.min_evidence_recall_at_5
                ),
                max_hit_at_5_drop=_fraction_setting(
                    "POLICYFRESH_GATE_MAX_HIT_AT_5_DROP", Gate.max_hit_at_5_drop
                ),
                escalation_threshold=_fraction_setting(
                    "POLICYFRESH_ESCALATION_THRESHOLD", Gate.escalation_threshold
                ),
                escalation_margin=_fraction_setting(
                    "POLICYFRESH_GATE_ESCALATION_MARGIN", Gate.escalation_margin
                ),
            ),
            judge_url=env.get("POLICYFRESH_JUDGE_URL") or None,
            judge_model=env.get("POLICYFRESH_JUDGE_MODEL") or None,
            freshness_slo=freshness_slo(),
            source_quiet_seconds=parse_duration(
                "POLICYFRESH_SOURCE_QUIET", env.get("POLICYFRESH_SOURCE_QUIET", "2s")
            ),
            max_held_share=_fraction_setting("POLICYFRESH_MAX_HELD_SHARE", 0.25),
            max_removed_share=_fraction_setting("POLICYFRESH_MAX_REMOVED_SHARE", 0.25),
            max_file_bytes=_int_setting(
                "POLICYFRESH_MAX_FILE_BYTES", 50_000_000, 1, "a policy file has at least a byte"
            ),
            allow_mass_delete=env.get("POLICYFRESH_ALLOW_MASS_DELETE", "").lower() in TRUE,
            service=ServiceLimits.load(),
            impact_webhook=_webhook_url(
                "POLICYFRESH_IMPACT_WEBHOOK", env.get("POLICYFRESH_IMPACT_WEBHOOK", "").strip()
            ),
            model_cache_dir=Path(env["POLICYFRESH_MODEL_CACHE"]).resolve()
            if env.get("POLICYFRESH_MODEL_CACHE")
            else None,
        )
