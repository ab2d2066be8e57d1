"""A real browser (Debian's Chromium driven by Playwright): sign in, create a team, see its audit row."""

from __future__ import annotations

import pytest

from portfolio.accounts.models import Department, Team
from tests.conftest import PASSWORD
from tests.e2e.browsers import chromium_page

pytestmark = pytest.mark.e2e


@pytest.fixture
def browser_page():
    with chromium_page(viewport={"width": 1366, "height": 768}) as page:
        yield page


@pytest.mark.django_db(transaction=True)
def test_admin_signs_in_creates_a_team_and_sees_the_audit_row(live_server, make_user, browser_page, tmp_path):
    make_user("alice", superuser=True)
    Department.objects.create(name="Customer Operations", cost_center="CC-100")
    page = browser_page

    page.goto(f"{live_server.url}/")
    assert "/login/" in page.url
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/")

    page.goto(f"{live_server.url}/teams/new/")
    page.get_by_label("Department").select_option(label="Customer Operations (CC-100)")
    page.get_by_label("Name", exact=False).first.fill("Fraud Detection")
    page.get_by_role("button", name="Create team").click()
    page.wait_for_url(f"{live_server.url}/teams/fraud-detection/")
    assert page.get_by_role("heading", name="Fraud Detection").is_visible()

    page.goto(f"{live_server.url}/audit/?action=team.create")
    row = page.locator("table tr", has_text="team.create")
    assert row.count() == 1
    assert "Fraud Detection" in row.first.inner_text() and "alice" in row.first.inner_text()
    page.screenshot(path=str(tmp_path / "audit.png"))
    assert Team.objects.filter(slug="fraud-detection").exists()


SHOW_WHEN_PAGE = """<!doctype html><html><body>
<form id="deploy">
  <select name="pool"><option value="">Choose</option><option value="1" data-kind="cpu">small</option>
    <option value="2" data-kind="gpu">big</option></select>
  <label><input type="radio" name="method" value="lora" checked> LoRA</label>
  <label><input type="radio" name="method" value="qlora"> QLoRA</label>
  <div id="gpu-only" data-show-when="pool.kind=gpu" data-show-unset><input name="tensor_parallel_size"></div>
  <p id="qlora-on-cpu" data-show-when="method=qlora; pool.kind=cpu" hidden>Refused on a CPU pool.</p>
</form>
<form id="key">
  <select name="team"><option value="">Choose</option><option value="1">A</option><option value="2">B</option></select>
  <div id="team-1" data-show-when="team=1" data-show-unset data-show-when-clear>
    <input type="checkbox" name="scopes" value="chat" checked></div>
  <p id="no-endpoints" data-show-when="team!=1" hidden>No endpoints in this team yet.</p>
</form>
<form id="edit"><div id="untouched" data-show-when="team=9" hidden></div></form>
</body></html>"""


def test_form_parts_show_and_hide_with_the_choices_they_apply_to(browser_page):
    """``data-show-when`` in app.js: the engine arguments of a pool kind, a note for QLoRA on a CPU pool,
    and the scopes of the chosen team (the three toggles it replaced), in a page of its own."""
    from django.contrib.staticfiles import finders

    page = browser_page
    page.set_content(SHOW_WHEN_PAGE)
    page.add_script_tag(path=finders.find("portfolio/app.js"))

    def hidden(element_id: str) -> bool:
        return page.eval_on_selector(f"#{element_id}", "e => e.hidden")

    # Nothing chosen yet: everything applies, except what needs a choice.
    assert (
        not hidden("gpu-only") and hidden("qlora-on-cpu") and not hidden("team-1") and hidden("no-endpoints")
    )
    page.select_option("#deploy select[name=pool]", "1")
    assert hidden("gpu-only") and page.is_disabled("input[name=tensor_parallel_size]")
    assert hidden("qlora-on-cpu")
    page.check("input[value=qlora]")
    assert not hidden("qlora-on-cpu")
    page.select_option("#deploy select[name=pool]", "2")
    assert not hidden("gpu-only") and not page.is_disabled("input[name=tensor_parallel_size]")
    assert hidden("qlora-on-cpu")

    page.select_option("#key select[name=team]", "2")
    assert hidden("team-1") and not hidden("no-endpoints")
    assert page.is_disabled("input[name=scopes]") and not page.is_checked("input[name=scopes]")
    page.select_option("#key select[name=team]", "1")
    assert not hidden("team-1") and hidden("no-endpoints") and not page.is_disabled("input[name=scopes]")
    # A form without the control leaves the part as the server drew it.
    assert hidden("untouched")


@pytest.mark.django_db(transaction=True)
def test_the_pages_load_every_stylesheet_they_link(live_server, browser_page):
    page = browser_page
    loaded = []
    page.on("response", lambda response: loaded.append((response.url, response.status)))
    page.goto(f"{live_server.url}/login/")
    sheets = [(url, status) for url, status in loaded if url.endswith(".css")]
    assert len(sheets) > 5 and all(status == 200 for _, status in sheets)
    # A rule of the first stylesheet (base.css) and one of a later one (auth.css) both apply.
    assert page.evaluate("getComputedStyle(document.documentElement).fontSize") == "15px"
    assert "radial-gradient" in page.eval_on_selector("body", "e => getComputedStyle(e).backgroundImage")
