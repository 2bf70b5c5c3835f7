"""The web app in a real browser (Debian's headless Chromium) against the running stack."""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from devstack.services import Stack
from staging.backends.sample_room import sample_room

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (installed by `make test` when missing)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _photo(tmp_path: Path, name: str, seed: int) -> str:
    path = tmp_path / name
    buf = io.BytesIO()
    sample_room(900, 600, seed=seed).save(buf, "JPEG", quality=88)
    path.write_bytes(buf.getvalue())
    return str(path)


def _sign_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=email]", email)
    page.click("#dev-signin button")
    page.wait_for_selector("#new-project")


class TestWebApp:
    """An agent signs in, creates a project, uploads two photos and sees them staged live."""

    def test_upload_and_watch_photos_get_staged(
        self, stack: Stack, browser: Browser, tmp_path: Path
    ) -> None:
        base = stack.url("gateway")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

        _sign_in(page, base, f"agent-{uuid.uuid4().hex[:6]}@example.com")
        page.fill("#new-project input[name=name]", "12 Elm Street")
        page.click("#new-project button")
        page.wait_for_selector("#view[data-ready=project]")
        assert page.inner_text("#project-name") == "12 Elm Street"
        page.set_input_files(
            "#files", [_photo(tmp_path, "den.jpg", 1), _photo(tmp_path, "loft.jpg", 2)]
        )
        page.select_option("#room-type", "office")
        page.select_option("#style", "industrial")
        page.click("#stage-button")

        # Status arrives over server-sent events: no reload, no polling in the test.
        page.locator(".status.ready").nth(1).wait_for(timeout=60_000)
        page.locator(".compare img.after").nth(1).wait_for(state="attached", timeout=20_000)
        assert page.locator(".tile").count() == 2
        assert "Office · Industrial" in page.inner_text("#gallery")
        assert "2 of 5 photos" in page.inner_text("#usage")
        assert problems == []
        page.close()

    def test_a_bad_file_gets_a_clear_message(
        self, stack: Stack, browser: Browser, tmp_path: Path
    ) -> None:
        page = browser.new_page()
        _sign_in(page, stack.url("gateway"), f"agent-{uuid.uuid4().hex[:6]}@example.com")
        page.fill("#new-project input[name=name]", "Bad files")
        page.click("#new-project button")
        page.wait_for_selector("#view[data-ready=project]")
        text_file = tmp_path / "notes.jpg"
        text_file.write_text("these are my notes, not a photo")
        page.set_input_files("#files", [str(text_file)])
        page.click("#stage-button")
        page.locator("#project-error").filter(has_text="not a JPEG").wait_for(timeout=15_000)
        assert page.locator(".tile").count() == 0
        page.close()
