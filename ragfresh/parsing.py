"""Turn the bytes of one policy file into text, a title and its front matter, per format."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import frontmatter
import yaml

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html",
           ".htm": "html", ".pdf": "pdf", ".docx": "docx"}  # fmt: skip
MAX_PDF_PAGES = 2_000  # a PDF bomb declares millions of pages: refused unread


class ParseError(Exception):
    """A file that cannot be ingested; the message is the reason recorded in `ingest_errors`."""


@dataclass(frozen=True)
class ParsedDocument:
    """Extracted text (markdown where the format has structure) and what the file says of itself."""

    format: str
    title: str
    text: str
    front_matter: dict[str, Any] = field(default_factory=dict)


def document_format(doc_id: str) -> str:
    """The format name for a path, or a ParseError for an extension ragfresh does not read."""
    suffix = PurePosixPath(doc_id).suffix.lower()
    if suffix not in FORMATS:
        raise ParseError(f"unsupported format {suffix or '(no extension)'!r}")
    return FORMATS[suffix]


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise ParseError("binary content (NUL bytes) in a text format")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"invalid UTF-8 at byte {exc.start}") from exc


# An ATX heading: 1-6 `#`, a space, the title, optionally closing `#`s after a space.
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)


def _first_heading(markdown: str) -> str | None:
    match = HEADING.search(markdown)
    return match.group(2).strip() if match else None


def _parse_markdown(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    raw = _decode(data)
    handler = frontmatter.YAMLHandler()
    if not handler.detect(raw):
        return raw, _first_heading(raw), {}
    header, text = handler.split(raw)
    try:
        meta = handler.load(header) or {}
    except yaml.YAMLError as exc:
        raise ParseError(f"malformed YAML front matter: {exc}".splitlines()[0]) from exc
    if not isinstance(meta, dict):
        raise ParseError("front matter is not a mapping of keys to values")
    title = str(meta.get("title") or "").strip() or _first_heading(text)
    if not text.strip() and title:
        # A front-matter-only page (a Jekyll redirect stub) is a document: its title and target.
        moved = meta.get("redirect_to")
        text = f"# {title}" + (f"\n\nThis page has moved to {moved}" if moved else "")
    return text, title, meta


def _parse_text(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    return _decode(data), None, {}


def _parse_html(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    from bs4 import BeautifulSoup
    from markdownify import markdownify

    soup = BeautifulSoup(_decode(data), "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(["script", "style", "head", "nav"]):
        tag.decompose()
    text = markdownify(str(soup), heading_style="ATX", bullets="-")
    return re.sub(r"\n{3,}", "\n\n", text).strip(), title or _first_heading(text), {}


def _parse_pdf(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        raise ParseError("encrypted PDF")
    if len(reader.pages) > MAX_PDF_PAGES:  # read from the page tree: no page is parsed yet
        raise ParseError(f"{len(reader.pages)} pages, more than the limit of {MAX_PDF_PAGES}")
    pages = [page.extract_text() or "" for page in reader.pages]
    title = str(reader.metadata.title) if reader.metadata and reader.metadata.title else None
    return "\n\n".join(page.strip() for page in pages), title, {}


def _parse_docx(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    blocks: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text, style = block.text.strip(), (block.style.name if block.style else "") or ""
            if not text:
                continue
            if style.startswith("Heading") and style[-1:].isdigit():
                text = "#" * int(style[-1]) + " " + text
            elif style == "Title":
                text = "# " + text
            elif style.startswith("List"):
                text = "- " + text
            blocks.append(text)
        elif isinstance(block, Table):
            rows = [[cell.text.strip() for cell in row.cells] for row in block.rows]
            if rows:
                lines = ["| " + " | ".join(row) + " |" for row in rows]
                lines.insert(1, "|" + " --- |" * len(rows[0]))
                blocks.append("\n".join(lines))
    return "\n\n".join(blocks), document.core_properties.title or None, {}


_PARSERS: dict[str, Callable[[bytes], tuple[str, str | None, dict[str, Any]]]] = {
    "markdown": _parse_markdown,
    "text": _parse_text,
    "html": _parse_html,
    "pdf": _parse_pdf,
    "docx": _parse_docx,
}


def parse_document(doc_id: str, data: bytes) -> ParsedDocument:
    """Parse one file; raise ParseError with a reason for anything that cannot be ingested."""
    fmt = document_format(doc_id)
    if not data.strip():
        raise ParseError("empty file")
    try:
        text, title, meta = _PARSERS[fmt](data)
    except ParseError:
        raise
    except Exception as exc:  # a parser library's own error: the file is bad, not the run
        raise ParseError(f"unreadable {fmt.upper()}: {type(exc).__name__}: {exc}") from exc
    text = text.strip()
    if not text:
        raise ParseError("no text after parsing (empty body)")
    title = title or _first_heading(text) or PurePosixPath(doc_id).stem.replace("-", " ")
    return ParsedDocument(format=fmt, title=title, text=text, front_matter=meta)


def read_front_matter(doc_id: str, data: bytes) -> dict[str, Any]:
    """Front matter alone, for files whose content is already ingested."""
    return _parse_markdown(data)[2] if document_format(doc_id) == "markdown" else {}
