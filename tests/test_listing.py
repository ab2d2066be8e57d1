"""The list pages' shared kit: one page size, a page for any ``?page=``, the pager's query string."""

from __future__ import annotations

from django.test import RequestFactory

from portfolio import listing


def get(query: str = ""):
    return RequestFactory().get(f"/things?{query}")


def test_a_list_is_cut_into_pages_of_the_one_page_size():
    page = listing.paginate(get("page=2"), list(range(120)))
    assert listing.PAGE_SIZE == 50
    assert page.number == 2
    assert list(page.object_list) == list(range(50, 100))


def test_a_page_number_that_is_not_one_gets_the_first_page():
    for hostile in ("abc", "1e9", "%00", ""):
        assert listing.paginate(get(f"page={hostile}"), list(range(120))).number == 1


def test_a_page_number_out_of_range_gets_the_last_page():
    for hostile in ("0", "-1", "99999999999999999999"):
        assert listing.paginate(get(f"page={hostile}"), list(range(120))).number == 3


def test_a_page_size_of_its_own_is_honoured():
    assert len(listing.paginate(get(), list(range(30)), per_page=20).object_list) == 20


def test_the_query_string_keeps_the_filters_and_drops_the_named_parameters():
    request = get("status=running&page=3&format=csv&q=a+b")
    assert listing.query_without(request, "page") == "status=running&format=csv&q=a+b"
    assert listing.query_without(request, "page", "format") == "status=running&q=a+b"


def test_only_a_filter_other_than_the_page_makes_a_list_filtered():
    assert not listing.is_filtered(get("page=2"))
    assert not listing.is_filtered(get("status="))
    assert listing.is_filtered(get("status=running&page=2"))
