"""Chromium under Playwright for the browser tests: a page, its browser closed and the test's database
connections with it."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest
from django.db import connections

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium_page(*, back_forward_cache: bool = False, **page_options) -> Iterator:
    """A page of a headless Chromium. Playwright turns the back/forward cache off unless told
    (``back_forward_cache``: as browsers ship it)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Chromium is missing: `make test` installs Debian's chromium package (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = (
        "true"  # Playwright's sync API runs an event loop in this thread
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            ignore_default_args=["--disable-back-forward-cache"] if back_forward_cache else None,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(**page_options)
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            # The test's own queries ran inside Playwright's greenlet, whose database connection is its own:
            # closed here, or its session would outlive the run and block dropping the test database.
            connections.close_all()
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
