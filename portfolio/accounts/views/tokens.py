"""Personal access tokens: a user's own tokens for scripts, each shown once when created, revocable."""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods

from portfolio import buttons, listing
from portfolio.accounts import gate, personal_tokens
from portfolio.accounts.actor import Actor
from portfolio.accounts.context import actor_of
from portfolio.accounts.forms import TokenCreateForm
from portfolio.accounts.models import PersonalToken
from portfolio.formviews import submit


def _token_list_response(request, actor: Actor, form: TokenCreateForm):
    tokens = gate.visible(actor, PersonalToken).order_by("-created_at", "-id")
    return render(
        request,
        "accounts/token_list.html",
        {
            "page": listing.paginate(request, tokens),
            "form": form,
            "max_days": settings.PERSONAL_TOKEN_MAX_DAYS,
        },
    )


@require_GET
def token_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows only their own tokens."""
    return _token_list_response(request, actor_of(request), TokenCreateForm())


# The secret also sits in `result` and in the helpers' frames below this one: mask every frame's locals.
@sensitive_variables()
@never_cache
@require_http_methods(["GET", "POST"])
def token_create(request):
    """Permission: any signed-in user, for themselves. The token is shown once, in this response."""
    actor = actor_of(request)
    if request.method == "GET":
        return _token_list_response(request, actor, TokenCreateForm())
    form = TokenCreateForm(request.POST)
    created = submit(
        request,
        form,
        lambda: personal_tokens.create_personal_token(actor=actor, **form.cleaned_data),
        # Rendered straight into this response: never the session, messages or logs.
        then=lambda result: render(
            request, "accounts/token_created.html", {"token": result[0], "plaintext": result[1]}
        ),
    )
    if created is not None:
        return created
    return _token_list_response(request, actor, form)


@require_http_methods(["GET", "POST"])
def token_revoke(request, pk: int):
    """Permission: the token is the actor's own (``gate.get_visible``), else 404. GET asks to confirm."""
    actor = actor_of(request)
    token = gate.get_visible(actor, PersonalToken, pk=pk)
    if request.method == "POST":
        return buttons.press(
            request,
            lambda: personal_tokens.revoke_personal_token(actor=actor, token=token),
            success=f"Token “{token.name}” revoked; scripts using it are refused from now on.",
            back="token-list",
        )
    return render(request, "accounts/token_revoke.html", {"token": token})
