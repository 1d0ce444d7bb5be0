"""The optional LLM judge: an OpenAI-compatible chat endpoint asked whether an expected answer
is grounded in the retrieved text. Off unless `POLICYFRESH_JUDGE_URL` and `POLICYFRESH_JUDGE_MODEL`
are set; when off, no score is invented."""

from __future__ import annotations

import json
import os
import re

import httpx

from policyfresh.store.errors import PolicyfreshError

NOT_CONFIGURED = "not configured"
PROMPT = """You grade a retrieval system. Given PASSAGES retrieved for a QUESTION, decide whether
the EXPECTED ANSWER is supported by the passages alone. Reply with JSON only:
{"score": <a number from 0 (not supported) to 1 (fully supported)>, "reason": "<one sentence>"}"""


class JudgeError(PolicyfreshError):
    """The judge endpoint failed or answered something that is not a score."""


class Judge:
    """A client of one OpenAI-compatible `/chat/completions` endpoint and model."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 60):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)

    @classmethod
    def from_settings(cls, url: str | None, model: str | None) -> Judge | None:
        """The configured judge, or None when it is off."""
        if not url or not model:
            return None
        return cls(url, model, os.environ.get("POLICYFRESH_JUDGE_API_KEY"))

    def groundedness(self, question: str, expected_answer: str, passages: list[str]) -> float:
        """A score in [0, 1]: how far the passages support the expected answer."""
        numbered = "\n\n".join(f"[{n}] {p}" for n, p in enumerate(passages, start=1))
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": PROMPT},
                {
                    "role": "user",
                    "content": f"QUESTION: {question}\n\nEXPECTED ANSWER: {expected_answer}"
                    f"\n\nPASSAGES:\n{numbered}",
                },
            ],
        }
        try:
            response = self._client.post(self.url, json=body)
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge {self.url} failed: {type(exc).__name__}: {exc}") from exc
        return _score(content)


def _score(content: str) -> float:
    """The score from the judge's reply: its JSON, else the first number in it."""
    try:
        value = float(json.loads(content)["score"])
    except (ValueError, KeyError, TypeError):
        match = re.search(r"\d+(?:\.\d+)?", content)
        if not match:
            raise JudgeError(f"judge reply has no score: {content[:120]!r}") from None
        value = float(match.group())
    if not 0.0 <= value <= 1.0:
        raise JudgeError(f"judge score {value} is not between 0 and 1")
    return value
