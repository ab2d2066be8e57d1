"""Where sign-in sends you next: a path of this site. A bare word (``?next=reports``) passed the host check,
and ``redirect`` took it for a view's name: a 500, after a correct password too (its sign-in audited, no
session saved). Found by review."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("next_url", ["reports", "dashboard", "https://evil.example/x", "//evil.example/x"])
def test_a_next_that_is_no_path_of_this_site_goes_to_the_dashboard(client, org, next_url):
    response = client.post(f"{reverse('login')}?next={next_url}", {"username": "owner", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    assert client.get(reverse("dashboard")).status_code == 200  # signed in: the session was saved


def test_a_signed_in_user_sent_to_sign_in_with_a_bare_word_goes_to_the_dashboard(client, org):
    client.force_login(org["viewer"])
    response = client.get(f"{reverse('login')}?next=reports")
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")


def test_a_path_of_this_site_is_followed(client, org):
    response = client.post(f"{reverse('login')}?next=/models/", {"username": "owner", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/models/"
