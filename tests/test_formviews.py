"""``formviews.submit``: a valid form runs the service call; the next page says how it went, or the form
comes back with the refusal next to its field."""

from __future__ import annotations

import pytest
from django import forms
from django.contrib.messages import get_messages
from django.contrib.messages.storage.cookie import CookieStorage
from django.http import HttpResponse
from django.test import RequestFactory

from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.formviews import submit


class NameForm(forms.Form):
    name = forms.CharField()


def _request():
    request = RequestFactory().post("/")
    request._messages = CookieStorage(request)
    return request


def _said(request) -> list[str]:
    return [str(message) for message in get_messages(request)]


def _never():
    raise AssertionError("the service must not be called")


def test_a_form_that_does_not_validate_calls_nothing_and_answers_none():
    request = _request()
    form = NameForm({"name": ""})
    assert submit(request, form, _never, then=lambda _: HttpResponse()) is None
    assert form.errors["name"]
    assert _said(request) == []


def test_an_unbound_form_calls_nothing():
    assert submit(_request(), NameForm(), _never, then=lambda _: HttpResponse()) is None


def test_success_says_so_and_answers_what_then_makes_of_the_result():
    request = _request()
    form = NameForm({"name": "gemma"})
    response = submit(
        request,
        form,
        lambda: form.cleaned_data["name"].upper(),
        success=lambda result: f"{result} saved.",
        then=lambda result: HttpResponse(result, status=201),
    )
    assert response is not None
    assert (response.status_code, response.content) == (201, b"GEMMA")
    assert _said(request) == ["GEMMA saved."]


def test_success_without_a_message_says_nothing():
    request = _request()
    response = submit(request, NameForm({"name": "a"}), lambda: 1, then=lambda _: HttpResponse())
    assert response is not None
    assert _said(request) == []


def test_a_refusal_goes_next_to_its_field_and_the_form_comes_back():
    request = _request()
    form = NameForm({"name": "taken"})

    def refuse():
        raise Conflict("name: this name is taken.")

    assert submit(request, form, refuse, success="never said", then=lambda _: HttpResponse()) is None
    assert form.errors["name"] == ["this name is taken."]
    assert _said(request) == []


def test_fields_rename_the_services_field_to_the_forms():
    form = NameForm({"name": "x"})

    def refuse():
        raise Invalid("Bad path.", fields={"path": ["Bad path."]})

    submit(_request(), form, refuse, then=lambda _: HttpResponse(), fields={"path": "name"})
    assert form.errors["name"] == ["Bad path."]


def test_refused_places_the_refusal_instead():
    form = NameForm({"name": "x"})
    placed = []

    def refuse():
        raise Invalid("No room.", code="unschedulable")

    submit(
        _request(),
        form,
        refuse,
        then=lambda _: HttpResponse(),
        refused=lambda form, exc: placed.append((form, exc.code)),
    )
    assert placed == [(form, "unschedulable")]
    assert not form.errors


def test_reload_reads_the_object_again_after_a_refusal_only():
    class Stored:
        reloaded = 0

        def refresh_from_db(self):
            self.reloaded += 1

    stored = Stored()

    def refuse():
        raise Invalid("Nope.")

    submit(_request(), NameForm({"name": "x"}), refuse, then=lambda _: HttpResponse(), reload=stored)
    submit(_request(), NameForm({"name": "x"}), lambda: None, then=lambda _: HttpResponse(), reload=stored)
    assert stored.reloaded == 1


@pytest.mark.parametrize("error", [NotFound("Model not found."), Forbidden("Your role does not allow it.")])
def test_refusals_of_access_propagate_to_the_404_and_403_pages(error):
    def refuse():
        raise error

    with pytest.raises(type(error)):
        submit(_request(), NameForm({"name": "x"}), refuse, then=lambda _: HttpResponse())
