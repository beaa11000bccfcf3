"""generate_scale at small scale: realistic proportions, consistent rows, and dashboards that render from them."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db.models import Count
from django.test import Client
from django.utils import timezone

from dashboards import generate as scale
from dashboards.bench import run_dashboard_benchmark
from healthsync.choices import ExceptionStatus, RunStatus
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem
from workflows.definitions import WORKFLOWS
from workflows.models import WorkflowRun, WorkflowStep

pytestmark = pytest.mark.django_db

ENCOUNTERS = 2_000
NOW = timezone.make_aware(datetime(2026, 6, 1, 12, 0))


@pytest.fixture
def generated() -> scale.ScaleResult:
    return scale.generate(encounters=ENCOUNTERS, events_per_encounter=10, chunk=700, now=NOW, seed=3)


def _share(counter: Counter, key: str) -> float:
    return counter[key] / sum(counter.values())


def test_it_writes_n_encounters_with_exactly_n_events_each(generated: scale.ScaleResult) -> None:
    encounters = WorkflowRun.objects.filter(workflow=scale.DTB)
    assert encounters.count() == ENCOUNTERS
    assert CanonicalEvent.objects.count() == ENCOUNTERS * 10 == generated.rows["events"]
    per_encounter = set(
        CanonicalEvent.objects.values("subject").annotate(n=Count("id")).values_list("n", flat=True)
    )
    assert per_encounter == {10}
    assert generated.rows == {
        "runs": WorkflowRun.objects.count(),
        "steps": WorkflowStep.objects.count(),
        "events": CanonicalEvent.objects.count(),
        "deliveries": Delivery.objects.count(),
        "exceptions": ExceptionItem.objects.count(),
    }
    # One submit_claim delivery per submitted claim, linked from the step.
    submitted = WorkflowStep.objects.filter(step="claim_submitted")
    assert Delivery.objects.count() == submitted.count() == submitted.filter(delivery__isnull=False).count()


def test_the_mix_of_facilities_payers_classes_and_outcomes_is_realistic(generated: scale.ScaleResult) -> None:
    runs = WorkflowRun.objects.filter(workflow=scale.DTB)
    classes = Counter(runs.values_list("patient_class", flat=True))
    assert 0.50 < _share(classes, "O") < 0.60 and 0.11 < _share(classes, "I") < 0.19
    payers = Counter(runs.values_list("payer", flat=True))
    assert 0.30 < _share(payers, "Medicare") < 0.40 and set(payers) == {p for p, _ in scale.PAYERS}
    assert set(runs.values_list("facility", flat=True)) == {f for f, _ in scale.FACILITIES}

    remitted = WorkflowStep.objects.filter(step__in=["paid", "denied"], run__workflow=scale.DTB)
    outcome = Counter(remitted.values_list("step", flat=True))
    assert 0.05 < _share(outcome, "denied") < 0.14
    assert 0.02 < ExceptionItem.objects.count() / ENCOUNTERS < 0.06
    assert ExceptionItem.objects.filter(status=ExceptionStatus.OPEN).exists()
    assert ExceptionItem.objects.filter(status=ExceptionStatus.RESOLVED).exists()
    # Two years of admissions, and recent encounters still on their way to the bill (DNFB).
    first = runs.order_by("started_at").first()
    assert first is not None and (NOW - first.started_at).days > 700
    assert runs.filter(status=RunStatus.ACTIVE).exclude(steps__step="claim_submitted").exists()
    assert WorkflowRun.objects.filter(workflow=scale.REMITTANCE).count() > 100


def test_every_step_follows_the_workflow_and_in_time_order(generated: scale.ScaleResult) -> None:
    declared = set(WORKFLOWS[scale.DTB].step_names)
    steps = WorkflowStep.objects.filter(run__workflow=scale.DTB).order_by("run_id", "occurred_at")
    last: dict[int, datetime] = {}
    for run_id, name, at in steps.values_list("run_id", "step", "occurred_at"):
        assert name in declared and at <= NOW
        assert last.get(run_id, at) <= at
        last[run_id] = at


def test_generating_twice_adds_rows_without_clashing_keys() -> None:
    scale.generate(encounters=50, events_per_encounter=3, now=NOW, seed=1)
    scale.generate(encounters=50, events_per_encounter=3, now=NOW, seed=1)
    assert WorkflowRun.objects.filter(workflow=scale.DTB).count() == 100
    assert CanonicalEvent.objects.count() == 300
    # The sequences moved on past the explicit ids: an ordinary insert still works.
    WorkflowRun.objects.create(workflow="discharge_to_bill", business_key="after-scale")


def test_the_dashboards_render_from_generated_data(
    generated: scale.ScaleResult, executive: User, client_for: Callable[[User], Client]
) -> None:
    client = client_for(executive)
    page = client.get("/dashboard/")
    assert page.status_code == 200
    assert client.get("/dashboard/", {"facility": "GEN_HOSP", "patient_class": "I"}).status_code == 200
    assert client.get("/dashboard/export.csv").status_code == 200


def test_the_dashboard_benchmark_reports_each_page(generated: scale.ScaleResult) -> None:
    result = run_dashboard_benchmark(requests=2)
    for key in (
        "dashboard_executive_ms",
        "dashboard_tiles_ms",
        "dashboard_ops_ms",
        "dashboard_ops_alerts_ms",
    ):
        assert result[key]["status"] == 200
        assert 0 < result[key]["p50"] <= result[key]["p95"] <= result[key]["max"]
    assert result["data"]["events"] == ENCOUNTERS * 10
    # Its sign-in users are gone afterwards.
    assert not User.objects.filter(username__startswith="bench-").exists()


def test_the_commands_print_json_and_refuse_bad_sizes() -> None:
    out = io.StringIO()
    call_command(
        "generate_scale", "--encounters", "30", "--events-per-encounter", "2", "--skip-rollups", stdout=out
    )
    body = json.loads(out.getvalue())
    assert body["encounters"] == 30 and body["rows"]["events"] == 60 and body["rows_per_second"] > 0
    with pytest.raises(CommandError, match="encounters, events per encounter"):
        call_command("generate_scale", "--encounters", "0")
    out = io.StringIO()
    call_command("benchmark", "--dashboards", "--requests", "1", stdout=out)
    assert json.loads(out.getvalue())["dashboard_executive_ms"]["status"] == 200
