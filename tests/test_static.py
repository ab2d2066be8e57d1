"""The pages' stylesheets and script: every one a page links is found, none grows past 500 lines."""

from __future__ import annotations

import re
from pathlib import Path

from django.contrib.staticfiles import finders
from django.template.loader import render_to_string

LINKED = re.compile(r'href="/static/([^"]+\.css)"')


def linked_stylesheets() -> list[str]:
    return LINKED.findall(render_to_string("includes/stylesheets.html"))


def test_every_linked_stylesheet_is_found_and_each_is_small():
    names = linked_stylesheets()
    assert len(names) > 5
    for name in names:
        path = finders.find(name)
        assert path, f"{name} is linked but not found"
        assert len(Path(path).read_text().splitlines()) < 500, f"{name} has grown past 500 lines"


def test_every_stylesheet_is_linked_so_none_is_forgotten():
    folder = Path(finders.find("portfolio/css/base.css")).parent
    assert {f"portfolio/css/{p.name}" for p in folder.glob("*.css")} == set(linked_stylesheets())


def test_the_foundation_comes_first_in_the_cascade():
    names = linked_stylesheets()
    assert names[0] == "portfolio/css/base.css"
    assert names.index("portfolio/css/badges.css") < names.index("portfolio/css/registry.css")


def test_the_sign_in_and_error_pages_link_the_same_stylesheets(client, db):
    page = client.get("/login/").content.decode()
    assert LINKED.findall(page) == linked_stylesheets()
    assert LINKED.findall(render_to_string("500.html")) == linked_stylesheets()
