"""Turn the bytes of one policy file into text, a title and its front matter, per format."""

from __future__ import annotations

import io
import itertools
import os
import pickle
import re
import resource
import select
import subprocess
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from policyfresh.store.config import max_parse_seconds

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html",
           ".htm": "html", ".pdf": "pdf", ".docx": "docx"}  # fmt: skip
MAX_PDF_PAGES = 2_000  # a PDF bomb declares millions of pages: refused unread
ISOLATED = ("html", "pdf", "docx")  # parsed in a child process that is killed past the time limit
MAX_PARSE_MEMORY = 4 * 1024**3  # the parser process's address space, in bytes


class ParseFailure(Exception):
    """A file that was not ingested; the message is the reason recorded in `ingest_errors`."""


class ParseError(ParseFailure):
    """An expected refusal: bad bytes, bad structure, or a limit (size, pages, time)."""


class ParseTimeoutError(ParseError):
    """Parsing ran past POLICYFRESH_MAX_PARSE_SECONDS: a limit, so a refusal, of its own kind."""


class ParserCrashError(ParseFailure):
    """The parser process died without a reply (a native crash, its memory limit)."""


class ParserBugError(ParseFailure):
    """An exception raised in policyfresh's own code while parsing: a bug, not a bad file."""


@dataclass(frozen=True)
class ParsedDocument:
    """Extracted text (markdown where the format has structure) and what the file says of itself."""

    format: str
    title: str
    text: str
    front_matter: dict[str, Any] = field(default_factory=dict)


def document_format(doc_id: str) -> str:
    """The format name for a path, or a ParseError for an extension policyfresh does not read."""
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


@dataclass(frozen=True)
class Heading:
    """A top-level markdown heading: its level, its plain text and where its first line starts."""

    level: int
    title: str
    start: int


# Block structure only (inline parsing of every paragraph would double the cost); raw HTML off,
# so that `<PERSON>` placeholders stay text.
_BLOCKS = MarkdownIt("commonmark", {"html": False}).disable("inline")
_INLINE = MarkdownIt("commonmark", {"html": False})
_LINE_BREAK = re.compile(r"\r\n?|\n")  # the line breaks markdown-it counts lines by


def _plain(tokens: list[Token]) -> str:
    """The text of inline tokens without their markup (emphasis, link targets, escapes)."""
    return "".join(
        _plain(t.children) if t.children else " " if t.type.endswith("break") else t.content
        for t in tokens
        if t.children or t.type in ("text", "code_inline", "softbreak", "hardbreak")
    )


def headings(markdown: str) -> list[Heading]:
    """ATX and setext headings outside code blocks, quotes and lists, as CommonMark reads them."""
    env: dict[str, Any] = {}
    tokens = _BLOCKS.parse(markdown, env)
    starts = [0] + [match.end() for match in _LINE_BREAK.finditer(markdown)]
    found = []
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open" and opening.level == 0 and opening.map:
            title = " ".join(_plain(_INLINE.parseInline(inline.content, env)).split())
            if title:
                found.append(Heading(int(opening.tag[1]), title, starts[opening.map[0]]))
    return found


FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*$\r?\n?", re.DOTALL | re.MULTILINE)


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: nested `*refs` expand to billions of items (a YAML bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise ParseError("front matter uses a YAML alias (*name): not accepted")
        return super().compose_node(parent, index)


def _split_front_matter(raw: str) -> tuple[dict[str, Any], str]:
    """(front matter, body). Front matter is a leading `---` block, closed by `---`, holding a
    YAML mapping; other YAML (prose, a list) is markdown after a horizontal rule. A block that
    is not YAML is an error (it may be a mistyped classification), unless a blank line follows
    the opening `---`: that is a horizontal rule, then prose."""
    match = FRONT_MATTER.match(raw)
    if not match:
        return {}, raw
    try:
        meta = yaml.load(match[1], Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        if match[1][:1] in ("\n", "\r"):
            return {}, raw
        raise ParseError(f"malformed YAML front matter: {exc}".splitlines()[0]) from exc
    if meta is None or isinstance(meta, dict):
        return meta or {}, raw[match.end() :]
    return {}, raw


def _parse_markdown(data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    meta, text = _split_front_matter(_decode(data))
    title = str(meta.get("title") or "").strip() or None
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
    return re.sub(r"\n{3,}", "\n\n", text), title, {}


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


# Where the standard library and installed packages live: an exception raised in their code
# while they read a file is their verdict on its bytes.
_PACKAGE = Path(__file__).parents[1]
_LIBRARIES = [Path(sysconfig.get_path(name)) for name in ("stdlib", "purelib", "platlib")]


def _library_code(filename: str) -> bool:
    """Whether a frame's file belongs to a library (pypdf reading a damaged xref, zipfile
    checking a CRC) rather than to policyfresh or anything else."""
    path = Path(filename)
    return not path.is_relative_to(_PACKAGE) and any(map(path.is_relative_to, _LIBRARIES))


def _extract(fmt: str, data: bytes) -> tuple[str, str | None, dict[str, Any]]:
    """Text, title and front matter. An exception raised inside a parser library becomes a
    ParseError (the file is bad); one raised anywhere else is a ParserBugError saying where."""
    try:
        text, title, meta = _PARSERS[fmt](data)
        text = text.strip()
        return text, title or next((h.title for h in headings(text)), None), meta
    except ParseFailure:
        raise
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        if _library_code(frame.filename):  # the file is bad, not the run
            raise ParseError(f"unreadable {fmt.upper()}: {type(exc).__name__}: {exc}") from exc
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        raise ParserBugError(f"parser bug: {type(exc).__name__}: {exc} ({where})") from exc


def _serve() -> None:
    """The parser process: (format, bytes) requests from stdin, pickled replies to stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (MAX_PARSE_MEMORY, MAX_PARSE_MEMORY))
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's print goes to stderr, not into the replies
    pickle.dump("ready", replies)
    replies.flush()
    while True:
        try:
            fmt, data = pickle.load(requests)
        except EOFError:  # the parent closed the pipe or exited
            return
        try:
            reply = ("parsed", _extract(fmt, data))
        except ParseFailure as exc:  # a refusal or a bug: the parent raises the same kind
            reply = ("error", type(exc)(str(exc)))
        pickle.dump(reply, replies)
        replies.flush()


# A new interpreter, not a fork (unsafe in a threaded process such as a Dagster run worker) nor
# multiprocessing (which re-imports the caller's main module and is refused in daemon processes).
_worker_lock = threading.Lock()
_worker: subprocess.Popen[bytes] | None = None


def _start_worker() -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from policyfresh.ingest.parsing import _serve; _serve()"]
    worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pickle.load(worker.stdout)  # "ready": starting the process is not the file's parse time
    return worker


def _parse_in_child(fmt: str, data: bytes, seconds: float) -> tuple[str, str | None, dict]:
    """`_extract` in the warm parser process. Past `seconds` the process is killed (a thread
    cannot stop a pure-Python hang) and the next file starts a new one."""
    global _worker
    with _worker_lock:
        worker = _worker if _worker and _worker.poll() is None else _start_worker()
        _worker = None  # given back after a whole reply only: any other way out kills it
        try:
            pickle.dump((fmt, data), worker.stdin)
            worker.stdin.flush()
            if not select.select([worker.stdout], [], [], seconds)[0]:
                raise ParseTimeoutError(
                    f"parsing took more than {seconds:g} s (POLICYFRESH_MAX_PARSE_SECONDS)"
                )
            try:
                outcome, value = pickle.load(worker.stdout)
            except (EOFError, pickle.UnpicklingError):
                code = worker.wait()
                raise ParserCrashError(
                    f"the parser process died (exit code {code}), e.g. out of memory"
                ) from None
            _worker = worker
        finally:
            if _worker is None:
                worker.kill()
                worker.communicate()  # waits for it and closes its pipes
    if outcome == "error":
        raise value
    return value


def parse_document(doc_id: str, data: bytes) -> ParsedDocument:
    """Parse one file. A file that cannot be ingested raises a ParseFailure with the reason:
    a ParseError when it is refused (bad bytes or structure, a limit), a ParserBugError or a
    ParserCrashError when parsing failed unexpectedly. HTML, PDF and DOCX are parsed in a
    child process, stopped at POLICYFRESH_MAX_PARSE_SECONDS (a ParseTimeoutError)."""
    fmt = document_format(doc_id)
    if not data.strip():
        raise ParseError("empty file")
    if fmt in ISOLATED:
        text, title, meta = _parse_in_child(fmt, data, max_parse_seconds())
    else:
        text, title, meta = _extract(fmt, data)
    if not text:
        raise ParseError("no text after parsing (empty body)")
    title = title or PurePosixPath(doc_id).stem.replace("-", " ")
    return ParsedDocument(format=fmt, title=title, text=text, front_matter=meta)


def read_front_matter(doc_id: str, data: bytes) -> dict[str, Any]:
    """Front matter alone, for files whose content is already ingested."""
    return _split_front_matter(_decode(data))[0] if document_format(doc_id) == "markdown" else {}
