"""Forms of the core console pages."""

from __future__ import annotations

from django import forms

from healthsync.choices import MessageStatus
from healthsync.models import Connector


class MessageFilterForm(forms.Form):
    """Filters of the message list; every field is optional."""

    status = forms.ChoiceField(choices=[("", "Any status"), *MessageStatus.choices], required=False)
    type = forms.CharField(required=False, max_length=40, label="Type", help_text="e.g. ADT^A03")
    connector = forms.ModelChoiceField(
        queryset=Connector.objects.all(), required=False, empty_label="Any connector"
    )
    q = forms.CharField(required=False, max_length=200, label="Control id")
