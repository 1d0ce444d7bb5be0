"""Open a local page in the browser with the network blocked: every request that is not for a
`file://` URL is aborted and recorded, and so is every request that failed."""

from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page, Request, Route


@dataclass
class Visit:
    """What a page asked for that it could not have offline."""

    remote: list[str] = field(default_factory=list)  # aborted: not a file:// URL
    failed: list[str] = field(default_factory=list)  # any request that failed, with why


def open_offline(page: Page, path: Path) -> Visit:
    """Load `path` with no request leaving the machine; wait until nothing more loads."""
    visit = Visit()

    def abort(route: Route) -> None:
        visit.remote.append(route.request.url)
        route.abort()

    def failed(request: Request) -> None:
        visit.failed.append(f"{request.url}: {request.failure}")

    page.unroute_all()
    page.route(lambda url: not url.startswith("file://"), abort)
    page.on("requestfailed", failed)
    try:
        page.goto(path.as_uri())
        page.wait_for_load_state("networkidle")
    finally:
        page.remove_listener("requestfailed", failed)
    return visit


def row_text(page: Page, table: str, text: str) -> str:
    """The text of the first visible row of the visible table `table` (a CSS selector) that
    contains `text`; fails if there is none."""
    row = page.locator(f"{table} tbody tr", has_text=text).first
    assert row.is_visible(), (table, text)
    return row.inner_text()
