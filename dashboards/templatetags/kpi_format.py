"""Formatting of KPI values on the dashboard."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    """A ratio (0.953) as a percentage ("95.3"); an em dash when there is nothing to divide."""
    if value is None:
        return "—"
    return f"{value * 100:.{digits}f}"
