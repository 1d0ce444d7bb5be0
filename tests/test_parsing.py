import io
import re
import sys
import zipfile

import docx
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from policyfresh.ingest import parsing
from policyfresh.ingest.documents import ingest_documents
from policyfresh.ingest.parsing import (
    MAX_PDF_PAGES,
    ParsedDocument,
    ParseError,
    ParserBugError,
    ParserCrashError,
    ParseTimeoutError,
    document_format,
    headings,
    parse_document,
    read_front_matter,
)
from tests.conftest import BUNDLED, SMALL


def test_markdown_front_matter_title_and_body():
    doc = parse_document("a/b.md", b"---\ntitle: Fees\nowner: team:x\n---\n## Limits\n\nText.\n")
    assert (doc.format, doc.title) == ("markdown", "Fees")
    assert doc.front_matter["owner"] == "team:x"
    assert doc.text.startswith("## Limits")


def test_markdown_title_falls_back_to_first_heading_then_file_name():
    assert parse_document("x.md", b"# Leave Policy\n\nbody").title == "Leave Policy"
    assert parse_document("x.md", b"## Using C# ##\n\nbody").title == "Using C#"
    assert parse_document("x.md", b"#\n\nIntro text").title == "x"
    assert parse_document("sick-leave.txt", b"just text").title == "sick leave"


def test_front_matter_only_page_is_a_document():
    doc = parse_document("r.md", b"---\ntitle: Buddy\nredirect_to: https://x.test/b\n---\n")
    assert doc.text == "# Buddy\n\nThis page has moved to https://x.test/b"


def _zip_without_document() -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("a.txt", "x")
    return data.getvalue()


ZIP_WITHOUT_DOCUMENT = _zip_without_document()  # zipfile's KeyError: a refusal, not a bug


@pytest.mark.parametrize(
    ("doc_id", "data", "reason"),
    [
        ("a.md", b"---\ntitle: [unclosed\n---\nbody", "malformed YAML front matter"),
        ("a.txt", b"caf\xe9 au lait", "invalid UTF-8 at byte 3"),
        ("a.txt", b"\x00\x01\x02binary", "binary content"),
        ("a.md", b"  \n\n", "empty file"),
        ("a.xlsx", b"PK\x03\x04", "unsupported format '.xlsx'"),
        ("Makefile", b"all:", "unsupported format '(no extension)'"),
        ("a.pdf", b"%PDF-1.4 garbage", "unreadable PDF"),
        ("a.docx", b"not a zip file", "unreadable DOCX"),
        ("a.docx", ZIP_WITHOUT_DOCUMENT, 'unreadable DOCX: KeyError: "There is no item named'),
        ("a.md", b"---\ndate: 2024-13-45\n---\nx", "unreadable MARKDOWN: ValueError: month"),
        ("a.html", b"<html><script>x()</script></html>", "no text after parsing"),
    ],
)
def test_bad_files_raise_a_clear_reason(doc_id, data, reason):
    with pytest.raises(ParseError, match=re.escape(reason)):
        parse_document(doc_id, data)


def test_html_becomes_markdown_with_headings_and_tables():
    html = (
        b"<html><head><title>Vendors</title></head><body><h1>Vendor rules</h1>"
        b"<p>Review yearly.</p><table><tr><th>Tier</th><th>Review</th></tr>"
        b"<tr><td>Critical</td><td>Annual</td></tr></table></body></html>"
    )
    doc = parse_document("v.html", html)
    assert doc.title == "Vendors"
    assert "# Vendor rules" in doc.text
    assert "| Critical | Annual |" in doc.text


def test_bundled_pdf_has_extractable_text():
    doc = parse_document("m.pdf", (BUNDLED / "retail" / "mortgage-hardship.pdf").read_bytes())
    assert doc.format == "pdf"
    assert "hardship" in doc.text.lower()
    assert len(doc.text) > 1000


def test_docx_headings_lists_and_tables_become_markdown():
    document = docx.Document()
    document.core_properties.title = "Travel"
    document.add_heading("Booking", level=1)
    document.add_paragraph("Book through the travel desk.")
    document.add_paragraph("Economy class only", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Item", "Limit"
    table.cell(1, 0).text, table.cell(1, 1).text = "Hotel", "$250"
    buffer = io.BytesIO()
    document.save(buffer)
    doc = parse_document("t.docx", buffer.getvalue())
    assert doc.title == "Travel"
    assert "# Booking" in doc.text
    assert "- Economy class only" in doc.text
    assert "| Hotel | $250 |" in doc.text


def test_bundled_docx_parses():
    doc = parse_document("t.docx", (BUNDLED / "hr" / "travel.docx").read_bytes())
    assert doc.text.count("#") >= 2


def test_formats_and_front_matter_only_for_markdown():
    assert document_format("A/B.MD") == "markdown"
    assert read_front_matter("a.txt", b"---\nowner: team:x\n---\n") == {}
    assert read_front_matter("a.md", b"---\nowner: team:x\n---\nbody") == {"owner": "team:x"}


def test_a_pdf_with_more_pages_than_the_limit_is_refused_before_it_is_read():
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(MAX_PDF_PAGES + 1):  # the parser process has its own copy of the limit
        writer.add_blank_page(width=200, height=200)
    data = io.BytesIO()
    writer.write(data)
    with pytest.raises(ParseError, match=f"{MAX_PDF_PAGES + 1} pages, more than the limit of"):
        parse_document("big.pdf", data.getvalue())


def test_a_leading_horizontal_rule_is_markdown_not_front_matter():
    for data in (
        b"---\n\nWelcome: read this first, then: the rest.\n\n---\n\n## Scope\n\nAll staff.\n",
        b"---\r\n\r\nIntro.\r\n\r\n---\r\n## Scope\r\n",
        b"---\n- a list\n- between rules\n---\nbody\n",
        b"---\nno closing rule\n\n## Scope\n",
    ):
        doc = parse_document("hr.md", data)
        assert (doc.front_matter, doc.text) == ({}, data.decode().strip())
    assert parse_document("hr.md", b"---\n\nIntro\n\n## Scope\n").title == "Scope"


def test_front_matter_refuses_yaml_aliases():
    bomb = b"---\na: &a [x, x]\nb: &b [*a, *a]\ntitle: *b\n---\nbody"
    with pytest.raises(ParseError, match="YAML alias"):
        parse_document("bomb.md", bomb)


def test_headings_come_from_markdown_structure_not_hash_lines():
    text = (
        "```\n# comment in a fence\n```\n\n    # indented code\n\n"
        "Leave Policy\r\n============\r\n\r\n> # quoted\n\n## *Annual* `leave` ##\n"
    )
    assert [(h.level, h.title, text[h.start : h.start + 5]) for h in headings(text)] == [
        (1, "Leave Policy", "Leave"),
        (2, "Annual leave", "## *A"),
    ]
    assert parse_document("x.md", b"```\n# not a title\n```\n\nbody").title == "x"
    assert parse_document("x.md", b"Fees\n----\n\nbody").title == "Fees"


def test_a_parse_over_the_time_limit_is_stopped_with_the_reason(monkeypatch):
    pdf = (BUNDLED / "retail" / "mortgage-hardship.pdf").read_bytes()
    monkeypatch.setenv("POLICYFRESH_MAX_PARSE_SECONDS", "0.001")
    with pytest.raises(
        ParseTimeoutError, match=r"more than 0.001 s \(POLICYFRESH_MAX_PARSE_SECONDS\)"
    ):
        parse_document("m.pdf", pdf)
    monkeypatch.delenv("POLICYFRESH_MAX_PARSE_SECONDS")
    assert "hardship" in parse_document("m.pdf", pdf).text.lower()  # a new parser process


FUZZ = hypothesis_settings(max_examples=50, deadline=None)
MARKDOWN_PIECES = ["---", "title: T", "owner: [a", "# H", "## H ##", "===", "```", "    # c",
                   "> # q", "- # i", "[r]: /x", "a: &a [1]", "b: *a", "", " ", "\t", "<b>x</b>",
                   "*", "\\#"]  # fmt: skip
HTML_PIECES = ["<h1>", "</h1>", "<h3>", "<p>", "<table>", "<tr>", "<th>", "<td>", "</table>",
               "<script>", "<!--", "<![CDATA[", "&amp;", "&#0;", "<br/>", "<a href='x'>",
               "<title>", "<ul><li>", "<pre>", "</", ">"]  # fmt: skip


def parsed_or_refused(doc_id: str, data: bytes) -> ParsedDocument | None:
    """The parsed file, or None when it was refused (a ParseError other than a timeout: no
    fuzzed file should take a minute). A parser bug or a crash fails the test."""
    try:
        return parse_document(doc_id, data)
    except ParseTimeoutError:
        raise
    except ParseError:
        return None


@FUZZ
@given(st.sampled_from(["a.md", "a.txt", "a.html", "a.pdf", "a.docx"]), st.binary(max_size=500))
def test_random_bytes_raise_nothing_but_parse_error(doc_id, data):
    parsed_or_refused(doc_id, data)


@FUZZ
@given(
    st.lists(st.one_of(st.sampled_from(MARKDOWN_PIECES), st.text(max_size=20)), max_size=25),
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from(["a.md", "a.txt"]),
)
@example(["---", "---", "\r0"], "\n", "a.md")  # the body starts with whitespace: stripped
def test_markdown_and_text_come_back_as_their_decoded_text(lines, newline, doc_id):
    data = newline.join(lines).encode()
    doc = parsed_or_refused(doc_id, data)
    if doc is None:
        return
    decoded = data.decode("utf-8-sig").strip()
    after = re.search(r"\n\s*" + re.escape(doc.text) + r"\Z", decoded)
    body = decoded.startswith("---") and after is not None
    assert doc.text == decoded or body or doc.text == f"# {doc.title}"
    for heading in headings(doc.text):
        assert heading.title and (heading.start == 0 or doc.text[heading.start - 1] in "\r\n")


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(HTML_PIECES), st.text(max_size=10)), max_size=30))
def test_html_fragments_raise_nothing_but_parse_error(parts):
    parsed_or_refused("a.html", "".join(parts).encode())


@FUZZ
@given(st.sampled_from(["retail/mortgage-hardship.pdf", "hr/travel.docx"]), st.data())
def test_damaged_pdf_and_docx_raise_nothing_but_parse_error(name, data):
    original = bytearray((BUNDLED / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    damaged = bytes(original[: data.draw(st.integers(1, len(original)))])
    parsed_or_refused(name, damaged)


LAST_LINE_HEADING = b"Intro\n\n## Fees\n\nbody"


def test_an_exception_in_policyfresh_code_is_a_parser_bug_not_a_refusal(monkeypatch):
    monkeypatch.setattr(parsing, "_LINE_BREAK", re.compile("(?!)"))  # a line-break regex gone bad
    with pytest.raises(ParserBugError) as raised:
        parse_document("fees.md", LAST_LINE_HEADING)
    assert not isinstance(raised.value, ParseError)
    assert re.fullmatch(
        r"parser bug: IndexError: list index out of range \(parsing\.py:\d+ in headings\)",
        str(raised.value),
    )


FAULTY_WORKER = """#!{python}
import os, signal, sys
from policyfresh.ingest import parsing

def fault(data):
    if b"crash" in data:
        os.kill(os.getpid(), signal.SIGKILL)
    if b"bug" in data:
        return [][0]
    return parse_html(data)

parse_html = parsing._PARSERS["html"]
parsing._PARSERS["html"] = fault
parsing._serve()
"""


@pytest.fixture
def faulty_worker(tmp_path, monkeypatch):
    """The parser process started by the next isolated parse runs `_serve` with an HTML
    parser that fails on demand: b"bug" raises IndexError, b"crash" kills the process."""
    script = tmp_path / "faulty-worker"
    script.write_text(FAULTY_WORKER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setattr(parsing, "_worker", None)
    monkeypatch.setattr(sys, "executable", str(script))  # _start_worker runs it, arguments ignored
    yield
    if parsing._worker is not None:  # the faulty worker kept after a whole reply
        parsing._worker.kill()
        parsing._worker.communicate()


def test_the_parser_process_reports_a_bug_and_a_crash_as_their_own_kinds(faulty_worker):
    with pytest.raises(ParserBugError, match=r"parser bug: IndexError: .* in fault\)"):
        parse_document("a.html", b"<p>a bug</p>")
    assert parse_document("a.html", b"<h1>Fees</h1><p>ok</p>").title == "Fees"  # same process
    with pytest.raises(ParserCrashError, match=r"the parser process died \(exit code -9\)"):
        parse_document("a.html", b"<p>a crash</p>")
    assert parse_document("a.html", b"<h1>Fees</h1><p>ok</p>").text == "# Fees\n\nok"


def test_a_parser_bug_quarantines_its_file_as_a_bug_and_the_ingestion_goes_on(
    small_settings, monkeypatch
):
    parse_markdown = parsing._PARSERS["markdown"]

    def buggy_on_one_file(data: bytes):
        if b"overdraft" in data.lower():
            return [][0]
        return parse_markdown(data)

    monkeypatch.setitem(parsing._PARSERS, "markdown", buggy_on_one_file)
    result = ingest_documents(small_settings, "bug")
    assert result.added == len(SMALL) - 1
    assert result.errors["path"].to_list() == ["retail/overdraft-fees.md"]
    assert result.errors["reason"][0].startswith(
        "parser bug: IndexError: list index out of range ("
    )
