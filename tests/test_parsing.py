import io

import docx
import pytest

from ragfresh.parsing import ParseError, document_format, parse_document, read_front_matter
from tests.conftest import BUNDLED


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


@pytest.mark.parametrize(
    ("doc_id", "data", "reason"),
    [
        ("a.md", b"---\ntitle: [unclosed\n---\nbody", "malformed YAML front matter"),
        ("a.md", b"---\n- a\n- b\n---\nbody", "front matter is not a mapping"),
        ("a.txt", b"caf\xe9 au lait", "invalid UTF-8 at byte 3"),
        ("a.txt", b"\x00\x01\x02binary", "binary content"),
        ("a.md", b"  \n\n", "empty file"),
        ("a.xlsx", b"PK\x03\x04", "unsupported format '.xlsx'"),
        ("Makefile", b"all:", "unsupported format '(no extension)'"),
        ("a.pdf", b"%PDF-1.4 garbage", "unreadable PDF"),
        ("a.docx", b"not a zip file", "unreadable DOCX"),
        ("a.html", b"<html><script>x()</script></html>", "no text after parsing"),
    ],
)
def test_bad_files_raise_a_clear_reason(doc_id, data, reason):
    with pytest.raises(ParseError, match=reason.replace("(", r"\(").replace(")", r"\)")):
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


def test_a_pdf_with_more_pages_than_the_limit_is_refused_before_it_is_read(monkeypatch):
    from pypdf import PdfWriter

    from ragfresh import parsing

    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(width=200, height=200)
    data = io.BytesIO()
    writer.write(data)
    monkeypatch.setattr(parsing, "MAX_PDF_PAGES", 2)
    with pytest.raises(ParseError, match="3 pages, more than the limit of 2"):
        parse_document("big.pdf", data.getvalue())
