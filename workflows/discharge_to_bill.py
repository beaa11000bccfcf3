"""Discharge-to-bill: discharge → account complete → claim to the RCM → accrual journal to the ERP."""

from __future__ import annotations


def register() -> None:
    """Subscribe to canonical events and delivery outcomes (filled in by the workflow work)."""
