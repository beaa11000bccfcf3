"""Forms of the exception queue: its filters and the recovery actions staff take on one exception."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Q, QuerySet

from healthsync.choices import ExceptionKind, ExceptionStatus

ALL_STATUSES = "all"
UNRESOLVED = "unresolved"
SORTS = {
    "age": ("created_at", "id"),  # oldest first
    "-age": ("-created_at", "-id"),
    "amount": ("amount", "id"),
    "-amount": ("-amount", "id"),
}


def workers() -> QuerySet:
    """Active users who may work exceptions: the people an exception can be assigned to."""
    perm = Permission.objects.filter(content_type__app_label="healthsync", codename="work_exceptionitem")
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(is_superuser=True) | Q(user_permissions__in=perm) | Q(groups__permissions__in=perm))
        .distinct()
        .order_by("username")
    )


class ExceptionFilterForm(forms.Form):
    """Filters and sort order of the queue; unknown values fall back to the defaults."""

    status = forms.ChoiceField(
        choices=[
            *ExceptionStatus.choices,
            (UNRESOLVED, "Unresolved (open, in progress, waiting)"),
            (ALL_STATUSES, "All"),
        ],
        required=False,
    )
    kind = forms.ChoiceField(choices=[("", "Any kind"), *ExceptionKind.choices], required=False)
    assignee = forms.ChoiceField(required=False)
    q = forms.CharField(required=False, max_length=200, label="Business key")
    sort = forms.ChoiceField(
        choices=[
            ("age", "Oldest first"),
            ("-age", "Newest first"),
            ("-amount", "Largest amount first"),
            ("amount", "Smallest amount first"),
        ],
        required=False,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].choices = [
            ("", "Anyone"),
            ("me", "Assigned to me"),
            ("none", "Unassigned"),
            *[(str(user.pk), user.get_full_name() or user.username) for user in workers()],
        ]

    def cleaned_or_default(self) -> dict[str, str]:
        """The filters to apply: valid values as given, defaults for missing or invalid ones."""
        values = {"status": ExceptionStatus.OPEN.value, "kind": "", "assignee": "", "q": "", "sort": "age"}
        if self.is_valid():
            values.update({key: value for key, value in self.cleaned_data.items() if value})
        return values


class AssignForm(forms.Form):
    """Assign to a colleague; "assign to me" posts the current user's own id."""

    assignee = forms.ModelChoiceField(queryset=get_user_model().objects.none(), label="Assign to")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = workers()
        self.fields["assignee"].label_from_instance = lambda user: user.get_full_name() or user.username


class CommentForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), label="Comment", max_length=5000)


class ResolveForm(forms.Form):
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Resolution note",
        max_length=5000,
        error_messages={"required": "Say how the exception was resolved."},
    )


class IgnoreForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Reason for ignoring",
        max_length=5000,
        error_messages={"required": "Say why the exception can be ignored."},
    )


class FixForm(forms.Form):
    """Corrected values for the fields an exception says are missing or wrong, built from detail["fix_fields"]."""

    def __init__(self, *args: Any, fix_fields: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for spec in fix_fields or []:
            name = str(spec.get("name") or "").strip()
            if not name:
                continue
            self.fields[name] = forms.CharField(
                label=str(spec.get("label") or name),
                required=bool(spec.get("required", False)),
                max_length=500,
                help_text=str(spec.get("help") or ""),
            )

    def fixes(self) -> dict[str, str]:
        """The values to resubmit with; optional fields left empty are not sent."""
        return {name: value.strip() for name, value in self.cleaned_data.items() if value and value.strip()}
