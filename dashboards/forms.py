"""The dashboard's filters, read from the query string so a filtered view can be bookmarked and shared."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone

from dashboards.selectors import MAX_RANGE_DAYS, WINDOW_DAYS, Filters

MIN_YEAR, MAX_YEAR = 1900, 2999
PATIENT_CLASSES = [
    ("", "All classes"),
    ("I", "Inpatient (I)"),
    ("O", "Outpatient (O)"),
    ("E", "Emergency (E)"),
    ("P", "Preadmit (P)"),
    ("R", "Recurring (R)"),
    ("B", "Obstetrics (B)"),
]


class DashboardFilterForm(forms.Form):
    facility = forms.CharField(required=False, max_length=80)
    start = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    patient_class = forms.ChoiceField(required=False, choices=PATIENT_CLASSES, label="Patient class")
    payer = forms.CharField(required=False, max_length=120)

    def clean(self) -> dict:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        for name, day in (("start", start), ("end", end)):
            # Dates near year 1 or 9999 overflow the window arithmetic; no revenue cycle lives there.
            if day and not MIN_YEAR <= day.year <= MAX_YEAR:
                self.add_error(name, f"Pick a date between {MIN_YEAR} and {MAX_YEAR}.")
                return data
        if start and end:
            if start > end:
                raise forms.ValidationError("The start date must be on or before the end date.")
            if (end - start).days + 1 > MAX_RANGE_DAYS:
                raise forms.ValidationError(f"Pick a range of at most {MAX_RANGE_DAYS} days.")
        return data

    def to_filters(self, now: datetime | None = None) -> Filters:
        """The window the form asks for; dates are whole local days, the end date included."""
        now = now or timezone.now()
        data = self.cleaned_data if self.is_valid() else {}
        tz = timezone.get_current_timezone()
        end = data.get("end")
        end_at = datetime.combine(end + timedelta(days=1), time.min, tz) if end else now
        start = data.get("start")
        start_at = datetime.combine(start, time.min, tz) if start else end_at - timedelta(days=WINDOW_DAYS)
        if (end_at - start_at).days > MAX_RANGE_DAYS:
            # Only a start far before today with no end gets here: cap it so the queries stay bounded.
            start_at = end_at - timedelta(days=MAX_RANGE_DAYS)
        return Filters(
            start=start_at,
            end=end_at,
            facility=data.get("facility", ""),
            patient_class=data.get("patient_class", ""),
            payer=data.get("payer", ""),
        )
