"""Plotly figures for the dashboards: pure functions of already-computed numbers, testable without a browser."""

from __future__ import annotations

import plotly.graph_objects as go
from django.utils.safestring import SafeString, mark_safe

from dashboards.selectors import AgeBandRow, Bin, ExceptionKindRow, WeeklyPoint

BRAND = "#0b5cad"
ACCENT = "#e07b00"


def _layout(fig: go.Figure, title: str) -> go.Figure:
    # The "none" template keeps each embedded figure small; plotly's default template is ~7 kB of JSON.
    fig.update_layout(
        template="none",
        title={"text": title, "x": 0, "font": {"size": 15}},
        margin={"l": 56, "r": 56, "t": 48, "b": 90},
        height=320,
        font={"family": "system-ui, sans-serif", "size": 12},
        legend={"orientation": "h", "y": -0.45},
    )
    return fig


def weekly_trend_figure(points: list[WeeklyPoint]) -> go.Figure:
    """Billed runs per discharge week (bars) and their median discharge-to-bill days (line)."""
    weeks = [point.week_start.isoformat() for point in points]
    fig = go.Figure()
    fig.add_bar(
        x=weeks, y=[point.billed for point in points], name="Runs billed", marker_color=BRAND, yaxis="y"
    )
    fig.add_scatter(
        x=weeks,
        y=[round(point.median_days, 2) for point in points],
        name="Median days to bill",
        mode="lines+markers",
        line={"color": ACCENT},
        yaxis="y2",
    )
    fig.update_layout(
        xaxis={"title": {"text": "Week of discharge"}, "type": "category"},
        yaxis={"title": {"text": "Runs billed"}, "rangemode": "tozero"},
        yaxis2={"title": {"text": "Median days"}, "overlaying": "y", "side": "right", "rangemode": "tozero"},
    )
    return _layout(fig, "Discharge-to-bill by week")


def distribution_figure(days: list[float]) -> go.Figure:
    """Histogram of discharge-to-bill durations in days, one bin per half day."""
    fig = go.Figure(
        go.Histogram(
            x=[round(value, 3) for value in days],
            xbins={"size": 0.5},
            marker_color=BRAND,
            name="Runs",
            hovertemplate="%{x} days: %{y} runs<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis={"title": {"text": "Days from discharge to claim submitted"}},
        yaxis={"title": {"text": "Runs"}},
        bargap=0.05,
    )
    return _layout(fig, "Distribution of discharge-to-bill")


def distribution_bins_figure(bins: list[Bin], width_days: float = 0.5) -> go.Figure:
    """Histogram of discharge-to-bill days from counts made in the database (the last bin holds the tail)."""
    fig = go.Figure(
        go.Bar(
            x=[b.low_days + width_days / 2 for b in bins],
            y=[b.count for b in bins],
            width=width_days * 0.95,
            marker_color=BRAND,
            name="Accounts",
            hovertemplate="%{x} days: %{y} accounts<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis={"title": {"text": "Days from discharge to claim submitted"}},
        yaxis={"title": {"text": "Accounts"}},
    )
    return _layout(fig, "Distribution of discharge-to-bill")


def exceptions_by_kind_figure(rows: list[ExceptionKindRow]) -> go.Figure:
    """Open exceptions per kind (bars) with the money they hold up in the hover text."""
    fig = go.Figure(
        go.Bar(
            x=[row.label for row in rows],
            y=[row.count for row in rows],
            customdata=[float(row.amount) for row in rows],
            marker_color=ACCENT,
            hovertemplate="%{x}: %{y} open, $%{customdata:,.2f} at risk<extra></extra>",
        )
    )
    fig.update_layout(yaxis={"title": {"text": "Open exceptions"}, "rangemode": "tozero"})
    return _layout(fig, "Open exceptions by kind")


def to_div(fig: go.Figure) -> SafeString:
    """HTML for a figure drawn by the locally served plotly.js (never a CDN: hospitals run offline)."""
    html = fig.to_html(
        full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True}
    )
    # Plotly writes the markup and JSON-encodes the data; figures hold computed numbers and fixed labels only.
    return mark_safe(html)  # noqa: S308


def backlog_by_age_figure(rows: list[AgeBandRow]) -> go.Figure:
    """Open exceptions per age band (bars) with the money they hold up in the hover text."""
    fig = go.Figure(
        go.Bar(
            x=[row.band for row in rows],
            y=[row.count for row in rows],
            customdata=[float(row.amount) for row in rows],
            marker_color=BRAND,
            hovertemplate="%{x}: %{y} open, $%{customdata:,.2f} at risk<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis={"title": {"text": "Age since raised"}, "type": "category"},
        yaxis={"title": {"text": "Open exceptions"}, "rangemode": "tozero"},
    )
    return _layout(fig, "Exception backlog by age")
