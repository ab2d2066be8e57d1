"""Forms of the organisation pages. They only parse input: every change goes through accounts.services."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils.text import slugify

from portfolio.accounts.choices import OrgRole, SsoSourceKind, TeamRole
from portfolio.accounts.models import Department, Team

User = get_user_model()


# --- Sign-in ---------------------------------------------------------------------------------------
class LoginForm(forms.Form):
    username = forms.CharField(
        label="User name",
        max_length=150,
        widget=forms.TextInput(
            attrs={"autocomplete": "username", "autofocus": True, "autocapitalize": "none"}
        ),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class PasswordChangeForm(forms.Form):
    old_password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )
    new_password1 = forms.CharField(
        label="New password",
        strip=False,
        help_text="At least 12 characters; not a common password, not only digits, not like your user name.",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    new_password2 = forms.CharField(
        label="New password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, user, *args, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_old_password(self):
        value = self.cleaned_data["old_password"]
        if not self.user.check_password(value):
            raise forms.ValidationError("Your current password was entered incorrectly.")
        return value

    def clean(self):
        cleaned = super().clean()
        first, second = cleaned.get("new_password1"), cleaned.get("new_password2")
        if first and second and first != second:
            self.add_error("new_password2", "The two new passwords differ.")
        return cleaned


# --- Departments and teams -------------------------------------------------------------------------
class DepartmentForm(forms.Form):
    name = forms.CharField(max_length=100)
    cost_center = forms.CharField(
        label="Cost center",
        max_length=32,
        help_text="The code usage is billed to: 2-32 capital letters, digits or dashes, e.g. CC-100.",
    )


class TeamCreateForm(forms.Form):
    department = forms.ModelChoiceField(queryset=Department.objects.none(), empty_label="Choose a department")
    name = forms.CharField(max_length=100)
    slug = forms.SlugField(
        label="Address",
        max_length=60,
        required=False,
        help_text="Used in URLs (/teams/<address>/); derived from the name when left empty.",
    )
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 3}))

    # Addresses that collide with the pages under /teams/.
    RESERVED_SLUGS = frozenset({"new"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["department"].queryset = Department.objects.order_by("name")

    def clean(self):
        cleaned = super().clean()
        if slugify(cleaned.get("slug") or cleaned.get("name") or "") in self.RESERVED_SLUGS:
            self.add_error("slug", "This address is reserved; choose another one.")
        return cleaned


class TeamEditForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 4}))


class AddMemberForm(forms.Form):
    username = forms.CharField(
        label="User name",
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "none"}),
    )
    role = forms.ChoiceField(choices=TeamRole.choices, initial=TeamRole.VIEWER)

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = User.objects.filter(username=username, is_active=True).first()
        if user is None:
            raise forms.ValidationError("No active user with that name.")
        self.cleaned_data["user"] = user
        return username


class DepartmentManagerForm(forms.Form):
    username = AddMemberForm.base_fields["username"]

    clean_username = AddMemberForm.clean_username


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=TeamRole.choices)


# --- Users and tokens ------------------------------------------------------------------------------
class UserCreateForm(forms.Form):
    username = forms.CharField(
        label="User name",
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "none"}),
    )
    email = forms.EmailField(required=False, max_length=254)
    org_role = forms.ChoiceField(
        label="Organisation role",
        choices=[("", "None (team roles only)"), *OrgRole.choices],
        required=False,
        help_text="Platform admins may do everything; auditors read the audit log, users and billing.",
    )


class OrgRolesForm(forms.Form):
    roles = forms.MultipleChoiceField(
        label="Organisation roles",
        choices=OrgRole.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Platform admins may do everything; auditors read the audit log, users and billing.",
    )

    def __init__(self, *args, fixed=(), **kwargs):
        """``fixed``: roles given by single sign-on, not offered here (only the mapping rules change them)."""
        super().__init__(*args, **kwargs)
        self.fields["roles"].choices = [(v, label) for v, label in OrgRole.choices if v not in fixed]


class TokenCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What the token is for, e.g. “nightly eval script”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    expires_in_days = forms.IntegerField(label="Expires in (days)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit = settings.PERSONAL_TOKEN_MAX_DAYS
        self.fields["expires_in_days"] = forms.IntegerField(
            label="Expires in (days)",
            min_value=1,
            max_value=limit,
            initial=min(90, limit),
            help_text=f"Between 1 and {limit} days.",
        )


# --- Single sign-on --------------------------------------------------------------------------------
class SsoMappingForm(forms.Form):
    """A mapping rule: a group or role, and one target (a team role, an organisation role, or a department
    to manage); the service says which target is missing or one too many."""

    kind = forms.ChoiceField(label="Match", choices=SsoSourceKind.choices)
    value = forms.CharField(
        label="Group or role",
        max_length=255,
        help_text="A group's full path, such as /customer-ops/support-ai, or a role's name.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "autocapitalize": "none"}),
    )
    team = forms.ModelChoiceField(queryset=Team.objects.order_by("name"), required=False, label="Team")
    team_role = forms.ChoiceField(label="Team role", choices=[("", "—"), *TeamRole.choices], required=False)
    org_role = forms.ChoiceField(
        label="or organisation role", choices=[("", "—"), *OrgRole.choices], required=False
    )
    department = forms.ModelChoiceField(
        queryset=Department.objects.order_by("name"), required=False, label="or manager of department"
    )
