"""Progress on stderr: rich bars on a terminal, plain lines elsewhere, nothing for --json."""

import io
import sys

from policyfresh.cli.rendering import progress_shown
from policyfresh.store.progress import advance, counted


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_counts_and_nothing_is_told_outside_the_block(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with progress_shown():
        for _ in counted("documents parsed", ["a.md", "b.md", "c.md"]):
            pass
        advance("texts embedded", 4, 8)
    advance("texts embedded", 8, 8)  # after the block: no listener is left
    shown = screen.getvalue()
    assert "documents parsed" in shown and "3/3" in shown
    assert "texts embedded" in shown and "4/8" in shown and "8/8" not in shown


def test_not_a_terminal_gets_plain_lines_and_disabled_gets_none(capsys):
    with progress_shown():
        for _ in counted("documents parsed", ["a.md", "b.md"]):
            pass
    assert capsys.readouterr().err.startswith("documents parsed: 2/2 (")
    with progress_shown(enabled=False):
        for _ in counted("documents parsed", ["a.md", "b.md"]):
            pass
    assert capsys.readouterr().err == ""
