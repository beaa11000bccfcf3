"""Forms of the exception queue: its filters and the recovery actions staff take on one exception."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Q, QuerySet

from healthsync.choices import ExceptionKind, ExceptionStatus
from healthsync.models import ExceptionItem
from healthsync.services import WORK_QUEUES

ALL_STATUSES = "all"
UNRESOLVED = "unresolved"
SORTS = {
    "age": ("created_at", "id"),  # oldest first
    "-age": ("-created_at", "-id"),
    "amount": ("amount", "id"),
    "-amount": ("-amount", "id"),
    "due": ("sla_due_at", "created_at", "id"),  # most urgent first (no due time: by age)
}
AGES = [
    ("", "Any age"),
    ("1", "Older than 1 day"),
    ("3", "Older than 3 days"),
    ("7", "Older than 7 days"),
    ("30", "Older than 30 days"),
]


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
    facility = forms.ChoiceField(required=False)
    payer = forms.CharField(required=False, max_length=120)
    age = forms.ChoiceField(choices=AGES, required=False)
    min_amount = forms.DecimalField(
        required=False, min_value=0, max_digits=14, decimal_places=2, label="Amount at least"
    )
    sort = forms.ChoiceField(
        choices=[
            ("age", "Oldest first"),
            ("-age", "Newest first"),
            ("-amount", "Most money at risk first"),
            ("amount", "Smallest amount first"),
            ("due", "SLA due soonest"),
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
        facilities = (
            ExceptionItem.objects.exclude(facility="")
            .order_by("facility")
            .values_list("facility", flat=True)
            .distinct()
        )
        self.fields["facility"].choices = [("", "Any facility"), *[(f, f) for f in facilities[:200]]]

    def cleaned_or_default(self) -> dict[str, str]:
        """The filters to apply: valid values as given, defaults for missing or invalid ones."""
        values = {
            "status": ExceptionStatus.OPEN.value,
            "kind": "",
            "assignee": "",
            "q": "",
            "facility": "",
            "payer": "",
            "age": "",
            "min_amount": "",
            "sort": "age",
        }
        if self.is_valid():
            values.update(
                {key: str(value) for key, value in self.cleaned_data.items() if value not in (None, "")}
            )
        else:
            # Keep the valid filters when one is bad (a typo in the amount must not show everything).
            values.update(
                {
                    key: str(value)
                    for key, value in getattr(self, "cleaned_data", {}).items()
                    if value not in (None, "")
                }
            )
        return values


class RouteBackForm(forms.Form):
    """Send the exception to the team that fixes it at the source."""

    queue = forms.ChoiceField(choices=list(WORK_QUEUES.items()), label="Work queue")
    note = forms.CharField(required=False, max_length=2000, label="Note for the team")


class BulkForm(forms.Form):
    """One action on the exceptions ticked in the queue."""

    ACTIONS = [
        ("assign_me", "Assign to me"),
        ("assign", "Assign to…"),
        ("retry", "Retry"),
        ("resolve", "Close as resolved"),
        ("ignore", "Close as ignored"),
    ]
    action = forms.ChoiceField(choices=ACTIONS)
    ids = forms.TypedMultipleChoiceField(coerce=int, choices=[])
    assignee = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=False)
    note = forms.CharField(required=False, max_length=2000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = workers()
        data = args[0] if args else kwargs.get("data")
        ids = data.getlist("ids") if data is not None and hasattr(data, "getlist") else []
        self.fields["ids"].choices = [(value, value) for value in ids]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        action = cleaned.get("action")
        if action == "assign" and not cleaned.get("assignee"):
            self.add_error("assignee", "Choose whom to assign them to.")
        if action in ("resolve", "ignore") and not (cleaned.get("note") or "").strip():
            self.add_error("note", "Say why they are closed.")
        return cleaned


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
