"""Passages found at query time: the sentences of a candidate, scored by the question's words
they hold, the words that tell the candidates apart weighing most."""

from policyfresh.serve.passages import sentences, terms, with_passages

# Two chunks of the same section of the 18F parental leave page: both are about the leave
# throughout; one sentence of the second answers when the stay-on period starts.
ON_TOPIC = {
    "chunk_id": "a",
    "heading": "Paid parental leave > Eligibility",
    "text": "You are eligible for paid parental leave after 12 months of federal service.\n"
    "Paid parental leave can be used within 12 months of a birth or placement. "
    "Talk to your supervisor before you take leave.",
}
ANSWERS = {
    "chunk_id": "b",
    "heading": "Paid parental leave > Using it",
    "text": "You may take paid parental leave in pieces. "
    "If you split it, the 12 week period still begins after your final day of leave. "
    "Your supervisor approves each piece.",
}


def test_sentences_end_at_a_full_stop_before_a_capital_or_at_a_line_break():
    assert sentences(ANSWERS["text"]) == [
        "You may take paid parental leave in pieces.",
        "If you split it, the 12 week period still begins after your final day of leave.",
        "Your supervisor approves each piece.",
    ]
    assert sentences("- one item\n- another, e.g. this one\n\n") == [
        "- one item",
        "- another, e.g. this one",
    ]


def test_words_are_compared_by_their_stem_without_stop_words():
    assert terms("When does the period begin if I split it?") == {"period", "begin", "split"}
    assert terms("escalated") == terms("escalation") == {"escala"}


def test_the_chunk_whose_one_sentence_answers_scores_highest():
    question = "If I split my leave, when does the 12 week period begin?"
    scored = {r["chunk_id"]: r["_passage"] for r in with_passages(question, [ON_TOPIC, ANSWERS])}
    assert scored["b"] == 1.0, "every word of the question is in one sentence (or its heading)"
    assert 0 < scored["a"] < 0.5


def test_a_question_sharing_no_word_with_a_candidate_scores_zero():
    (row,) = with_passages("Will it rain in Chicago tomorrow?", [ANSWERS])
    assert row["_passage"] == 0.0 and row["chunk_id"] == "b"
