"""Governance pages: the board's inbox, a change request's review, mapping authoring, the test bench, audit."""

from __future__ import annotations

import csv
import json
from datetime import datetime, time
from typing import Any

import yaml
from auditlog.models import LogEntry
from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import formset_factory
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from healthsync.choices import ChangeKind, ChangeStatus, ReviewDecision, Transform
from healthsync.governance import services
from healthsync.governance.bench import run_rules
from healthsync.governance.configio import canonical, dump_yaml
from healthsync.governance.diff import change_diff
from healthsync.governance.impact import impact_of
from healthsync.governance.kinds import HANDLERS, ProposalInvalid, handler_for
from healthsync.models import ChangeRequest, MappingSet, SampleCase
from healthsync.views import paginate, querystring_without_page, render_htmx

VIEW = "healthsync.view_changerequest"
AUTHOR = services.AUTHOR_PERMISSION
AUDIT = "auditlog.view_logentry"
GOVERNED_MODELS = (
    "system",
    "connector",
    "mappingset",
    "mappingversion",
    "mappingrule",
    "schemaversion",
    "dataownership",
    "changerequest",
    "changereview",
    "samplecase",
    "ownershipexception",
)


def _get_change_for_user(request: HttpRequest, pk: int) -> ChangeRequest:
    # Every role with governance access reads every request; drafts stay private to their author.
    cr = get_object_or_404(
        ChangeRequest.objects.select_related("author", "deployed_by", "rollback_of"), pk=pk
    )
    if cr.status == ChangeStatus.DRAFT and cr.author_id != request.user.pk:
        raise PermissionDenied("This draft is not yours.")
    return cr


# Inbox ------------------------------------------------------------------------------------------------


@login_required
@permission_required(VIEW, raise_exception=True)
def inbox(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    requests = ChangeRequest.objects.select_related("author").exclude(
        status=ChangeStatus.DRAFT, author__isnull=False
    )
    if status in ChangeStatus.values:
        requests = ChangeRequest.objects.select_related("author").filter(status=status)
        if status == ChangeStatus.DRAFT:
            requests = requests.filter(author=request.user)
    pending = (
        ChangeRequest.objects.select_related("author")
        .filter(status=ChangeStatus.SUBMITTED)
        .order_by("submitted_at")
    )
    mine = ChangeRequest.objects.filter(
        author=request.user,
        status__in=(ChangeStatus.DRAFT, ChangeStatus.CHANGES_REQUESTED, ChangeStatus.APPROVED),
    )
    context = {
        "pending": [(cr, services.approval_state(cr)) for cr in pending],
        "mine": mine,
        "page": paginate(request, requests.order_by("-id")),
        "status": status,
        "statuses": ChangeStatus.choices,
        "querystring": querystring_without_page(request),
        "can_author": request.user.has_perm(AUTHOR),
        "kinds": [(kind, ChangeKind(kind).label) for kind in HANDLERS],
    }
    return render_htmx(request, "governance/inbox.html", "history", context)


# One change request -----------------------------------------------------------------------------------


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[
            (ReviewDecision.APPROVE, "Approve"),
            (ReviewDecision.REQUEST_CHANGES, "Request changes"),
            (ReviewDecision.REJECT, "Reject"),
        ],
        widget=forms.RadioSelect,
    )
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


def _change_context(request: HttpRequest, cr: ChangeRequest, **extra: Any) -> dict[str, Any]:
    user = request.user
    state = services.approval_state(cr)
    is_author = cr.author_id == user.pk
    return {
        "cr": cr,
        "diff": change_diff(cr.kind, cr.before, cr.after),
        "impact": impact_of(cr.kind, cr.after),
        "state": state,
        "reviews": cr.reviews.select_related("reviewer"),
        "review_form": extra.pop("review_form", None) or ReviewForm(),
        "can_review": cr.status == ChangeStatus.SUBMITTED and services.can_review(cr, user),
        "is_author": is_author,
        "can_edit": is_author and cr.status in (ChangeStatus.DRAFT, ChangeStatus.CHANGES_REQUESTED),
        "can_deploy": cr.status == ChangeStatus.APPROVED and user.has_perm(services.DEPLOY_PERMISSION),
        "can_rollback": cr.status == ChangeStatus.DEPLOYED
        and cr.before is not None
        and user.has_perm(AUTHOR),
        "after_yaml": dump_yaml(canonical(cr.kind, cr.after)),
        "errors": extra.pop("errors", []),
        **extra,
    }


@login_required
@permission_required(VIEW, raise_exception=True)
def change_detail(request: HttpRequest, pk: int) -> HttpResponse:
    cr = _get_change_for_user(request, pk)
    return render_htmx(request, "governance/change_detail.html", "workspace", _change_context(request, cr))


def _act(
    request: HttpRequest, cr: ChangeRequest, action: Any, **kwargs: Any
) -> tuple[ChangeRequest, list[str]]:
    try:
        return action(change_request=cr, actor=request.user, **kwargs), []
    except services.GovernanceError as exc:
        return cr, [exc.message]
    except ProposalInvalid as exc:
        return cr, exc.errors


@login_required
@permission_required(VIEW, raise_exception=True)
@require_POST
def change_review(request: HttpRequest, pk: int) -> HttpResponse:
    cr = _get_change_for_user(request, pk)
    form = ReviewForm(request.POST)
    errors: list[str] = []
    if form.is_valid():
        action = {
            ReviewDecision.APPROVE: services.change_request_approve,
            ReviewDecision.REJECT: services.change_request_reject,
            ReviewDecision.REQUEST_CHANGES: services.change_request_request_changes,
        }[form.cleaned_data["decision"]]
        cr, errors = _act(request, cr, action, comment=form.cleaned_data["comment"])
        if not errors:
            form = ReviewForm()
    context = _change_context(request, cr, review_form=form, errors=errors)
    return render_htmx(
        request,
        "governance/change_detail.html",
        "workspace",
        context,
        status=400 if errors or form.errors else 200,
    )


@login_required
@permission_required(VIEW, raise_exception=True)
@require_POST
def change_transition(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    cr = _get_change_for_user(request, pk)
    if action == "submit":
        cr, errors = _act(request, cr, services.change_request_submit)
    elif action == "deploy":
        cr, errors = _act(request, cr, services.change_request_deploy)
    elif action == "rollback":
        reason = request.POST.get("reason", "").strip() or "Roll back to the previous version."
        rollback, errors = _act(request, cr, services.change_request_rollback, reason=reason)
        if not errors:
            messages.success(request, f"Rollback CR-{rollback.pk} submitted for review.")
            return _redirect(request, reverse("governance_change", args=[rollback.pk]))
    else:
        return HttpResponseBadRequest("Unknown action.")
    context = _change_context(request, cr, errors=errors)
    return render_htmx(
        request, "governance/change_detail.html", "workspace", context, status=400 if errors else 200
    )


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    if getattr(request, "htmx", False):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


# Proposing a change (any kind) as YAML ----------------------------------------------------------------


class ProposalForm(forms.Form):
    title = forms.CharField(max_length=200)
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Why: the board reads this.")
    document = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 24, "spellcheck": "false", "class": "mono"}),
        help_text="The whole object as YAML, in the shape export_config writes.",
    )


def _parse_yaml(text: str) -> tuple[dict[str, Any] | None, str]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"This is not valid YAML: {exc}"
    if not isinstance(data, dict):
        return None, "The document must be a mapping of fields."
    return data, ""


@login_required
@permission_required(AUTHOR, raise_exception=True)
@require_http_methods(["GET", "POST"])
def propose(request: HttpRequest, kind: str) -> HttpResponse:
    if kind not in HANDLERS:
        return HttpResponseBadRequest("Unknown kind of change.")
    key = request.GET.get("key", "")
    state = handler_for(kind).current(key) if key else None
    errors: list[str] = []
    if request.method == "POST":
        form = ProposalForm(request.POST)
        if form.is_valid():
            data, error = _parse_yaml(form.cleaned_data["document"])
            if error:
                errors = [error]
            else:
                try:
                    cr = services.change_request_create(
                        kind=kind,
                        after=data,
                        title=form.cleaned_data["title"],
                        reason=form.cleaned_data["reason"],
                        actor=request.user,
                    )
                except services.GovernanceError as exc:
                    errors = [exc.message]
                except ProposalInvalid as exc:
                    errors = exc.errors
                else:
                    return redirect("governance_change", pk=cr.pk)
    else:
        form = ProposalForm(initial={"document": dump_yaml(canonical(kind, state)) if state else ""})
    context = {
        "form": form,
        "errors": errors,
        "kind": kind,
        "kind_label": ChangeKind(kind).label,
        "key": key,
        "objects": handler_for(kind).all_keys(),
    }
    return render_htmx(request, "governance/propose.html", "form", context, status=400 if errors else 200)


# Mapping authoring ------------------------------------------------------------------------------------


class RuleForm(forms.Form):
    target = forms.CharField(max_length=120, help_text="Canonical field, e.g. coverage.plan_id")
    source = forms.CharField(max_length=200, required=False, help_text="e.g. PV1-19.1")
    transform = forms.ChoiceField(choices=Transform.choices, required=False)
    argument = forms.CharField(
        required=False,
        help_text='Transform settings as JSON, e.g. {"table": {"I": "inpatient"}}',
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    required = forms.BooleanField(required=False)
    description = forms.CharField(max_length=200, required=False)

    def clean_argument(self) -> dict[str, Any]:
        text = self.cleaned_data["argument"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Settings must be an object, e.g. {"value": "SELF"}.')
        return value


RuleFormSet = formset_factory(RuleForm, extra=1, can_delete=True)


class MappingChangeForm(forms.Form):
    title = forms.CharField(max_length=200)
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))


def _initial_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**rule, "argument": json.dumps(rule["argument"]) if rule.get("argument") else ""} for rule in rules
    ]


@login_required
@permission_required("healthsync.view_mappingset", raise_exception=True)
def mapping_list(request: HttpRequest) -> HttpResponse:
    sets = MappingSet.objects.select_related("active_version").order_by("code")
    open_requests = {
        cr.target_key: cr
        for cr in ChangeRequest.objects.filter(kind=ChangeKind.MAPPING).exclude(
            status__in=(ChangeStatus.DEPLOYED, ChangeStatus.REJECTED)
        )
    }
    rows = [(m, open_requests.get(m.code), m.samples.count()) for m in sets]
    return render_htmx(
        request,
        "governance/mapping_list.html",
        "rows",
        {"rows": rows, "can_author": request.user.has_perm(AUTHOR)},
    )


@login_required
@permission_required(AUTHOR, raise_exception=True)
@require_http_methods(["GET", "POST"])
def mapping_edit(request: HttpRequest, code: str) -> HttpResponse:
    """Create or edit the draft change request proposing a new version of a mapping set's rules."""
    mapping_set = get_object_or_404(MappingSet, code=code)
    draft = ChangeRequest.objects.filter(
        kind=ChangeKind.MAPPING,
        target_key=code,
        author=request.user,
        status__in=(ChangeStatus.DRAFT, ChangeStatus.CHANGES_REQUESTED),
    ).first()
    base = draft.after if draft else handler_for(ChangeKind.MAPPING).current(code)
    assert base is not None
    errors: list[str] = []
    if request.method == "POST":
        form = MappingChangeForm(request.POST)
        formset = RuleFormSet(request.POST, prefix="rules")
        if form.is_valid() and formset.is_valid():
            rules = [
                {**f.cleaned_data, "transform": f.cleaned_data.get("transform") or ""}
                for f in formset.forms
                if f.cleaned_data and not f.cleaned_data.get("DELETE") and f.cleaned_data.get("target")
            ]
            for rule in rules:
                rule.pop("DELETE", None)
            after = {**base, "rules": rules}
            try:
                if draft:
                    draft = services.change_request_update(
                        change_request=draft,
                        after=after,
                        title=form.cleaned_data["title"],
                        reason=form.cleaned_data["reason"],
                        actor=request.user,
                    )
                else:
                    draft = services.change_request_create(
                        kind=ChangeKind.MAPPING,
                        after=after,
                        title=form.cleaned_data["title"],
                        reason=form.cleaned_data["reason"],
                        actor=request.user,
                    )
            except services.GovernanceError as exc:
                errors = [exc.message]
            except ProposalInvalid as exc:
                errors = exc.errors
            else:
                messages.success(
                    request, f"Draft CR-{draft.pk} saved. Try it on the test bench, then submit it."
                )
                return redirect("governance_change", pk=draft.pk)
    else:
        form = MappingChangeForm(initial={"title": draft.title, "reason": draft.reason} if draft else None)
        formset = RuleFormSet(initial=_initial_rules(base["rules"]), prefix="rules")
    context = {"mapping_set": mapping_set, "form": form, "formset": formset, "draft": draft, "errors": errors}
    return render_htmx(
        request,
        "governance/mapping_edit.html",
        "editor",
        context,
        status=400 if errors or form.errors or formset.total_error_count() else 200,
    )


class BenchForm(forms.Form):
    proposal = forms.ChoiceField(label="Rules to run", required=False)
    sample = forms.ModelChoiceField(
        queryset=SampleCase.objects.none(), required=False, label="Sample message"
    )
    message = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false", "class": "mono"}),
        required=False,
        label="Or paste a message",
        help_text="Use synthetic data only: the test bench is not a place for real patient messages.",
    )
    save_as = forms.CharField(max_length=120, required=False, label="Save as sample case named")


@login_required
@permission_required("healthsync.view_mappingset", raise_exception=True)
@require_http_methods(["GET", "POST"])
def mapping_bench(request: HttpRequest, code: str) -> HttpResponse:
    mapping_set = get_object_or_404(MappingSet, code=code)
    proposals = ChangeRequest.objects.filter(kind=ChangeKind.MAPPING, target_key=code).exclude(
        status__in=(ChangeStatus.DEPLOYED, ChangeStatus.REJECTED)
    )
    visible = [cr for cr in proposals if cr.status != ChangeStatus.DRAFT or cr.author_id == request.user.pk]
    choices = [("", "Live version")] + [(str(cr.pk), f"CR-{cr.pk}: {cr.title}") for cr in visible]
    form = BenchForm(request.POST or None, initial={"proposal": request.GET.get("cr", "")})
    form.fields["proposal"].choices = choices
    form.fields["sample"].queryset = mapping_set.samples.all()
    result = None
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        text = data["sample"].message if data["sample"] else data["message"]
        state = handler_for(ChangeKind.MAPPING).current(code)
        if data["proposal"]:
            state = next(cr.after for cr in visible if str(cr.pk) == data["proposal"])
        if not text.strip():
            errors = ["Pick a sample or paste a message."]
        else:
            assert state is not None
            result = run_rules(
                protocol=state["protocol"], event_type=state["event_type"], rules=state["rules"], message=text
            )
            if data["save_as"] and result.data is not None:
                try:
                    services.sample_case_save(
                        mapping_set=mapping_set,
                        name=data["save_as"],
                        message=text,
                        expected=result.data,
                        actor=request.user,
                    )
                except PermissionDenied as exc:
                    errors = [str(exc)]
                else:
                    messages.success(
                        request, f"Saved sample case {data['save_as']!r} with this output as expected."
                    )
    context = {"mapping_set": mapping_set, "form": form, "result": result, "errors": errors}
    return render_htmx(
        request, "governance/mapping_bench.html", "result", context, status=400 if errors else 200
    )


# Audit ------------------------------------------------------------------------------------------------


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, label="Who (user name)")
    model = forms.ChoiceField(required=False, label="What")
    object = forms.CharField(required=False, label="Object contains")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))


def _audit_entries(form: AuditFilterForm) -> QuerySet[LogEntry]:
    types = ContentType.objects.filter(app_label="healthsync", model__in=GOVERNED_MODELS)
    entries = LogEntry.objects.filter(content_type__in=types).select_related("actor", "content_type")
    if form.is_valid():
        data = form.cleaned_data
        if data["actor"]:
            entries = entries.filter(actor__username__iexact=data["actor"].strip())
        if data["model"]:
            entries = entries.filter(content_type__model=data["model"])
        if data["object"]:
            entries = entries.filter(object_repr__icontains=data["object"].strip())
        zone = timezone.get_current_timezone()
        if data["since"]:
            entries = entries.filter(timestamp__gte=datetime.combine(data["since"], time.min, zone))
        if data["until"]:
            entries = entries.filter(timestamp__lte=datetime.combine(data["until"], time.max, zone))
    return entries.order_by("-timestamp", "-id")


class _Echo:
    def write(self, value: str) -> str:
        return value


@login_required
@permission_required(AUDIT, raise_exception=True)
def audit_log(request: HttpRequest) -> HttpResponse:
    """Read-only: this page has no form that writes, and the admin's LogEntry pages refuse changes."""
    form = AuditFilterForm(request.GET or None)
    form.fields["model"].choices = [("", "Any")] + [
        (model, model.replace("version", " version").replace("ownership", " ownership").strip())
        for model in GOVERNED_MODELS
    ]
    entries = _audit_entries(form)
    if request.GET.get("format") == "csv":
        writer = csv.writer(_Echo())

        def rows() -> Any:
            yield writer.writerow(
                ["timestamp", "actor", "action", "model", "object_id", "object", "changes", "extra"]
            )
            for entry in entries.iterator():
                yield writer.writerow(
                    [
                        entry.timestamp.isoformat(),
                        entry.actor.get_username() if entry.actor else "",
                        entry.get_action_display(),
                        entry.content_type.model,
                        entry.object_pk,
                        entry.object_repr,
                        json.dumps(entry.changes_dict, sort_keys=True, default=str),
                        json.dumps(entry.additional_data or {}, sort_keys=True, default=str),
                    ]
                )

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="healthsync-audit.csv"'
        return response
    context = {
        "form": form,
        "page": paginate(request, entries, per_page=50),
        "querystring": querystring_without_page(request),
    }
    return render_htmx(request, "governance/audit.html", "results", context)


__all__ = ["get_user_model"]
