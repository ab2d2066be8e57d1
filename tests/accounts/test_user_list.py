"""The user list: a search survives paging."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.urls import reverse

from portfolio import listing


def test_the_pager_of_a_search_keeps_the_search(client, org):
    User = get_user_model()
    User.objects.bulk_create(User(username=f"alice-{n:03d}") for n in range(listing.PAGE_SIZE + 5))
    client.force_login(org["admin"])
    page = client.get(reverse("user-list"), {"q": "alice"}).content.decode()
    assert 'value="alice"' in page
    nexts = re.findall(r'href="\?([^"]*)"[^>]*rel="next"', page)
    assert nexts == ["q=alice&amp;page=2"]
    second = client.get(reverse("user-list"), {"q": "alice", "page": 2}).content.decode()
    assert "alice-054" in second and "alice-000" not in second
