"""The budgets' pages: the budgets one reads, and the forms that set or remove a team's or a department's
(``portfolio.billing.budgets``, which decides who may set what).

Permission: the list, ``billing.view`` (else 403). A team's form, ``budget.manage`` over the team (its
owners and its department's managers; admins; a team not visible: 404); its owners see only the amount,
alerts and notifications, not the ceiling or the hard limit. A department's form, ``department.change``
(platform admins; a department not visible: 404).
"""

from __future__ import annotations

from django import forms
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Department, Team
from portfolio.billing import budgets
from portfolio.billing.models import Budget
from portfolio.billing.models.budgets import audited_webhook
from portfolio.billing.views import billing_reader
from portfolio.buttons import press
from portfolio.errors import DomainError
from portfolio.formviews import submit

MAX_LIST_TEXT = 20 * 256  # the e-mail addresses, one per line or comma-separated


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


class BudgetForm(forms.Form):
    amount = forms.DecimalField(min_value=0, max_value=budgets.MAX_AMOUNT, max_digits=14, decimal_places=2)
    ceiling = forms.DecimalField(
        required=False,
        min_value=0,
        max_value=budgets.MAX_AMOUNT,
        max_digits=14,
        decimal_places=2,
        help_text="The most the team's owners may set; empty for none.",
    )
    hard_limit = forms.BooleanField(
        required=False,
        label="Hard limit",
        help_text="Refuse calls, jobs and scale-ups once the month's spend reaches the amount.",
    )
    thresholds = forms.CharField(
        max_length=200,
        initial="50, 80, 100",
        help_text="Alert at these percentages of the amount, comma-separated.",
    )
    notify_emails = forms.CharField(
        required=False,
        max_length=MAX_LIST_TEXT,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Notify e-mails",
        help_text="Whom the alerts go to (without any: the team's owners or the department's managers); one per line or comma-separated.",
    )
    # Never filled in with the URL set: its path is often the hook's credential (a Slack hook), and a page is
    # easily shared or cached. Left empty it keeps the URL; "remove_webhook" removes it.
    webhook_url = forms.CharField(
        required=False,
        max_length=budgets.MAX_URL,
        label="Webhook URL",
        help_text="Also POST each alert here, signed.",
    )
    remove_webhook = forms.BooleanField(required=False, label="Remove the webhook")

    def __init__(self, *args, sets_all: bool, team: bool, webhook: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        if not sets_all:  # a team's owners: the amount within the ceiling, alerts and notifications
            del self.fields["ceiling"], self.fields["hard_limit"]
        elif not team:  # a department's budget has no ceiling
            del self.fields["ceiling"]
        if webhook:
            self.fields["webhook_url"].widget.attrs["placeholder"] = (
                f"A webhook is set: {audited_webhook(webhook)}"
            )
            self.fields["webhook_url"].help_text = (
                "Leave this empty to keep it, or type a new URL to replace it; each alert is also POSTed to "
                "it, signed."
            )
        else:
            del self.fields["remove_webhook"]

    def clean_thresholds(self) -> list[int]:
        values = _items(self.cleaned_data["thresholds"])
        if not all(value.isdecimal() for value in values):  # "²".isdigit(), but int() refuses it
            raise forms.ValidationError("Whole percentages, comma-separated (50, 80, 100).")
        return [int(value) for value in values]

    def clean_notify_emails(self) -> list[str]:
        return _items(self.cleaned_data["notify_emails"])

    def clean(self) -> dict | None:
        if self.cleaned_data.get("remove_webhook") and self.cleaned_data.get("webhook_url"):
            self.add_error("webhook_url", "Either type a new URL or remove the webhook, not both.")
        return super().clean()

    def changes(self) -> dict:
        """set_budget's arguments: what the form shows; what it does not show stays as it is, and so does the
        webhook left empty unless it is removed."""
        changes = {name: self.cleaned_data[name] for name in self.fields if name != "remove_webhook"}
        if self.cleaned_data.get("remove_webhook"):
            changes["webhook_url"] = ""
        elif not changes["webhook_url"]:
            changes["webhook_url"] = budgets.UNCHANGED
        return changes


def _initial(budget: Budget | None) -> dict:
    if budget is None:
        return {}
    return {
        "amount": budget.amount,
        "ceiling": budget.ceiling,
        "hard_limit": budget.hard_limit,
        "thresholds": ", ".join(str(value) for value in budget.thresholds),
        "notify_emails": "\n".join(budget.notify_emails),
    }


def _place_refusal(form: BudgetForm, exc: DomainError) -> None:
    """A budget's rules (the ceiling, the department's amount) refuse with 403: on this form they are the
    reason the values were not taken, shown next to the field they name."""
    name, sep, rest = exc.message.partition(": ")
    if sep and name in form.fields:
        form.add_error(name, rest)
    else:
        form.add_error(None, exc.message)


def _remove(request, actor, budget: Budget | None, name: str):
    return press(
        request,
        lambda: budget and budgets.delete_budget(actor=actor, budget=budget),
        success=f"Budget of {name} removed." if budget else f"{name} has no budget to remove.",
        back="billing-budgets",
    )


@require_GET
def budget_list(request):
    """Permission: ``billing.view`` (else 403): the budgets of what the reader reads, and where they may
    set one."""
    actor, _reader = billing_reader(request)
    shown = list(budgets.readable(actor))
    settable_teams = list(budgets.settable_teams(actor))
    settable = {team.pk for team in settable_teams}
    rows = [
        {
            "budget": budget,
            "name": budget.department or budget.team,
            "edit": budget.team_id in settable if budget.team_id else actor.is_admin,
        }
        for budget in shown
    ]
    with_budget = {budget.team_id for budget in shown}
    return render(
        request,
        "billing/budgets.html",
        {
            "rows": rows,
            "teams_without": [team for team in settable_teams if team.pk not in with_budget],
            "departments_without": (
                Department.objects.filter(budget__isnull=True).order_by("name") if actor.is_admin else []
            ),
        },
    )


def _form_page(request, *, actor, subject, budget, sets_all, team, delete_url):
    form = BudgetForm(
        request.POST if request.method == "POST" else None,
        initial=_initial(budget),
        sets_all=sets_all,
        team=team,
        webhook=budget.webhook_url if budget else "",
    )
    if request.method == "POST":
        kwargs = {"team": subject} if team else {"department": subject}
        done = submit(
            request,
            form,
            lambda: budgets.set_budget(actor=actor, **kwargs, **form.changes()),
            success=f"Budget of {subject.name} saved.",
            then=lambda _budget: redirect("billing-budgets"),
            refused=_place_refusal,
        )
        if done is not None:
            return done
    return render(
        request,
        "billing/budget_form.html",
        {"form": form, "subject": subject, "budget": budget, "team": team, "delete_url": delete_url},
        status=400 if form.is_bound else 200,
    )


@require_http_methods(["GET", "POST"])
def team_budget(request, team_id: int):
    """Permission: ``budget.manage`` over the team (a team not visible: 404). Audited as ``budget.set``."""
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, pk=team_id)
    gate.require(actor, "budget.manage", team)
    sets_all = budgets.sets_all(actor, team)
    return _form_page(
        request,
        actor=actor,
        subject=team,
        budget=Budget.objects.filter(team=team).first(),
        sets_all=sets_all,
        team=True,
        delete_url="billing-team-budget-delete" if sets_all else "",
    )


@require_http_methods(["GET", "POST"])
def department_budget(request, department_id: int):
    """Permission: ``department.change`` (platform admins; not visible: 404). Audited as ``budget.set``."""
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=department_id)
    gate.require(actor, "department.change", department)
    return _form_page(
        request,
        actor=actor,
        subject=department,
        budget=Budget.objects.filter(department=department).first(),
        sets_all=True,
        team=False,
        delete_url="billing-department-budget-delete",
    )


@require_POST
def team_budget_delete(request, team_id: int):
    """Permission: ``budget.manage`` over the team, as its department's manager or an admin (owners: 403).
    Audited as ``budget.delete``."""
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, pk=team_id)
    gate.require(actor, "budget.manage", team)
    return _remove(request, actor, Budget.objects.filter(team=team).first(), team.name)


@require_POST
def department_budget_delete(request, department_id: int):
    """Permission: ``department.change`` (platform admins). Audited as ``budget.delete``."""
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=department_id)
    gate.require(actor, "department.change", department)
    return _remove(request, actor, Budget.objects.filter(department=department).first(), department.name)
