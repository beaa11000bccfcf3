"""The message store pages: list filters, the raw message and parsed fields behind PHI, lineage, audit."""

from __future__ import annotations

from collections.abc import Callable

from auditlog.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client

from healthsync.choices import DeliveryStatus, Direction, MessageStatus, Protocol, VersionStatus
from healthsync.models import (
    CanonicalEvent,
    Connector,
    Delivery,
    MappingSet,
    MappingVersion,
    Message,
    SchemaVersion,
)
from tests import console_data

HX = {"HTTP_HX_REQUEST": "true"}


def _access_rows(message: Message) -> int:
    return LogEntry.objects.get_for_object(message).filter(action=LogEntry.Action.ACCESS).count()


def _message_reader_without_phi() -> User:
    user = User.objects.create_user("reader", password="reader-password-1")
    user.user_permissions.add(Permission.objects.get(codename="view_message"))
    return user


def test_list_filters_by_status_type_connector_and_control_id(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    other = console_data.connector("lab-in")
    console_data.message(control_id="A1", message_type="ADT^A03", status=MessageStatus.PROCESSED)
    console_data.message(control_id="B2", message_type="ADT^A01", status=MessageStatus.FAILED)
    console_data.message(control_id="C3", message_type="DFT^P03", connector=other)
    client = client_for(engineer)

    def ids(query: str) -> set[str]:
        return {m.control_id for m in client.get(f"/messages/?{query}").context["page"].object_list}

    assert ids("") == {"A1", "B2", "C3"}
    assert ids("status=failed") == {"B2"}
    assert ids("type=a0") == {"A1", "B2"}
    assert ids(f"connector={other.pk}") == {"C3"}
    assert ids("q=c3") == {"C3"}


def test_list_rejects_an_unknown_connector_with_a_form_error(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    console_data.message()
    response = client_for(engineer).get("/messages/?connector=99999")
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()


def test_htmx_list_request_gets_only_the_results(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    console_data.message()
    response = client_for(engineer).get("/messages/?status=received", **HX)
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="message-results"')
    assert "<html" not in body
    assert "HX-Request" in response["Vary"]


def test_detail_shows_the_raw_message_one_segment_per_line_and_audits_it(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    message = console_data.message()
    body = client_for(engineer).get(f"/messages/{message.pk}/").content.decode()
    assert "MSH|^~\\&amp;|EPIC|GENHOSP" in body
    assert f"\nPID|1||{console_data.PATIENT_MRN}" in body
    entry = LogEntry.objects.get_for_object(message).get(action=LogEntry.Action.ACCESS)
    assert entry.actor == engineer


def test_detail_shows_parsed_fields_from_the_connector_adapter(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    message = console_data.message()
    response = client_for(engineer).get(f"/messages/{message.pk}/")
    segments = {segment.name: dict(segment.fields) for segment in response.context["segments"]}
    assert list(segments) == ["MSH", "PID", "PV1"]
    assert segments["MSH"]["MSH-9"] == "ADT^A03"
    assert segments["MSH"]["MSH-10"] == "CTRL0001"
    assert segments["PID"]["PID-5"] == console_data.PATIENT_NAME
    assert segments["PV1"]["PV1-19"] == "ENC1001"
    assert "<code>PV1-45</code>" in response.content.decode()


def test_detail_masks_raw_and_fields_without_phi_permission(
    client_for: Callable[[User], Client], db: None
) -> None:
    message = console_data.message()
    body = client_for(_message_reader_without_phi()).get(f"/messages/{message.pk}/").content.decode()
    assert console_data.PATIENT_MRN not in body
    assert "DOE" not in body
    assert "Your role cannot view it." in body
    assert _access_rows(message) == 0


def test_detail_of_an_unparseable_message_keeps_the_raw_text_and_says_why(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    message = console_data.message(raw="this is not hl7", message_type="", control_id="")
    body = client_for(engineer).get(f"/messages/{message.pk}/").content.decode()
    assert "this is not hl7" in body
    assert "could not be parsed: The message does not start with an MSH segment" in body


def test_detail_lists_events_with_mapping_lineage_and_deliveries(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    message = console_data.message()
    mapping_set = MappingSet.objects.create(
        code="adt-a03-discharge",
        name="Discharge",
        protocol=Protocol.HL7V2,
        message_type="ADT^A03",
        event_type="encounter.discharged",
    )
    version = MappingVersion.objects.create(mapping_set=mapping_set, number=3, status=VersionStatus.ACTIVE)
    schema = SchemaVersion.objects.create(
        event_type="encounter.discharged", version="1.2.0", json_schema={}, status=VersionStatus.ACTIVE
    )
    event = CanonicalEvent.objects.create(
        type="encounter.discharged",
        source="epic",
        subject="ENC1001",
        idempotency_key="epic:encounter:ENC1001:CTRL0001",
        message=message,
        mapping_version=version,
        schema_version=schema,
    )
    rcm = Connector.objects.create(
        system=message.connector.system,
        code="rcm-out",
        name="RCM",
        direction=Direction.OUTBOUND,
        protocol=Protocol.REST,
        config={"base_url": "http://127.0.0.1:1"},
    )
    Delivery.objects.create(
        connector=rcm,
        operation="submit_claim",
        idempotency_key="rcm:claim:ENC1001:1",
        status=DeliveryStatus.SUCCEEDED,
        external_id="CLM-9",
        event=event,
    )
    body = client_for(engineer).get(f"/messages/{message.pk}/").content.decode()
    assert "encounter.discharged" in body
    assert "adt-a03-discharge v3" in body
    assert "encounter.discharged 1.2.0" in body
    assert "submit_claim" in body
    assert "CLM-9" in body


def test_unknown_message_is_404(client_for: Callable[[User], Client], engineer: User) -> None:
    assert client_for(engineer).get("/messages/424242/").status_code == 404
