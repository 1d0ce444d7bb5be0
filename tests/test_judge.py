"""The optional LLM judge, against a small OpenAI-compatible server on 127.0.0.1."""

import pytest

from policyfresh.quality.judge import Judge, JudgeError


def test_the_judge_speaks_the_chat_completions_protocol(chat_server, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_JUDGE_API_KEY", "secret")
    judge = Judge.from_settings(chat_server.url, "grader-1")
    score = judge.groundedness("Fee?", "$29 per item", ["The fee is $29 per item.", "Other."])
    assert score == 0.9
    [request] = chat_server.requests
    assert request["path"] == "/v1/chat/completions" and request["model"] == "grader-1"
    assert request["auth"] == "Bearer secret" and request["temperature"] == 0
    assert "[1] The fee is $29 per item." in request["messages"][1]["content"]


def test_a_reply_without_json_still_gives_its_number(chat_server):
    chat_server.reply = "Score: 0.5 - partly supported"
    assert Judge(chat_server.url, "m").groundedness("q", "a", ["p"]) == 0.5


def test_judge_failures_are_clear_errors(chat_server):
    judge = Judge(chat_server.url, "m")
    chat_server.reply = "I cannot say"
    with pytest.raises(JudgeError, match="judge reply has no score"):
        judge.groundedness("q", "a", ["p"])
    chat_server.reply = '{"score": 7}'
    with pytest.raises(JudgeError, match="not between 0 and 1"):
        judge.groundedness("q", "a", ["p"])
    chat_server.status = 500
    with pytest.raises(JudgeError, match=r"judge .* failed: HTTPStatusError"):
        judge.groundedness("q", "a", ["p"])


def test_the_judge_is_off_unless_both_url_and_model_are_set():
    assert Judge.from_settings(None, "m") is None
    assert Judge.from_settings("http://127.0.0.1:9/v1", None) is None
