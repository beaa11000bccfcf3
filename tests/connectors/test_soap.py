"""The SOAP adapter (zeep) against the SOAP ERP simulator, a real HTTP server serving a WSDL: a journal posts
once, faults are permanent, 5xx and timeouts are transient, and a delivery runs end to end."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.simulators.soap_erp import SoapErpSimulator
from connectors.soap.adapter import SoapAdapter, clients
from healthsync.choices import DeliveryStatus, Direction, Protocol
from healthsync.deliveries import deliver
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, System

JOURNAL = {
    "external_reference": "epic:accrual:ENC-1",
    "journal_date": "2026-01-31",
    "currency": "USD",
    "description": "Revenue accrual, encounter ENC-1",
    "lines": [
        {
            "account": "1200",
            "account_name": "Receivables",
            "cost_center": "ICU",
            "debit": "150.00",
            "credit": "0",
        },
        {
            "account": "4000",
            "account_name": "Revenue",
            "cost_center": "ICU",
            "debit": "0",
            "credit": "150.00",
        },
    ],
}


@pytest.fixture
def erp() -> Iterator[SoapErpSimulator]:
    clients.clear()
    with SoapErpSimulator() as sim:
        yield sim
    clients.clear()


def _config(sim: SoapErpSimulator, **extra: Any) -> dict[str, Any]:
    return {
        "wsdl": sim.wsdl_url,
        "operations": {
            "post_journal": {
                "operation": "Submit_Accounting_Journal",
                "request": "workday_journal",
                "result_path": "Accounting_Journal_Reference.ID",
            }
        },
        **extra,
    }


def _connector(sim: SoapErpSimulator, **extra: Any) -> Connector:
    # Unsaved: the adapter reads attributes only.
    return Connector(
        system=System(code="erp", name="ERP"),
        code="erp-soap",
        direction=Direction.OUTBOUND,
        protocol=Protocol.SOAP,
        timeout_seconds=2,
        config=_config(sim, **extra),
    )


def _delivery(payload: dict[str, Any] | None = None) -> Delivery:
    return Delivery(
        operation="post_journal", idempotency_key="epic:accrual:ENC-1", payload=payload or JOURNAL
    )


def test_it_posts_a_journal_and_keeps_the_document_number(erp: SoapErpSimulator) -> None:
    result = SoapAdapter().send(_connector(erp), _delivery())
    assert result.external_id.startswith("JE-")
    assert result.response == {"Accounting_Journal_Reference": {"ID": result.external_id}}
    posted = erp.journals[result.external_id]
    assert posted["external_reference"] == "epic:accrual:ENC-1"
    assert [line["account"] for line in posted["lines"]] == ["1200", "4000"]
    assert erp.requests["GET /ccx/service/Financial_Management"] == 1


def test_a_resent_journal_is_not_posted_twice(erp: SoapErpSimulator) -> None:
    adapter, connector = SoapAdapter(), _connector(erp)
    first = adapter.send(connector, _delivery())
    # The retry after a lost reply: the ERP faults on the reused reference, naming the journal it has.
    again = adapter.send(connector, _delivery())
    assert again.external_id == first.external_id
    assert again.response["duplicate_of"] == first.external_id
    assert len(erp.journals) == 1
    assert erp.requests["GET /ccx/service/Financial_Management"] == 1  # the WSDL is loaded once


def test_a_fault_is_a_permanent_error_with_the_fault_text(erp: SoapErpSimulator) -> None:
    unbalanced = {**JOURNAL, "lines": [{**JOURNAL["lines"][0], "debit": "151.00"}, JOURNAL["lines"][1]]}
    with pytest.raises(ConnectorError) as caught:
        SoapAdapter().send(_connector(erp), _delivery(unbalanced))
    assert caught.value.permanent
    assert "does not balance" in caught.value.message
    assert erp.journals == {}


def test_http_5xx_is_transient(erp: SoapErpSimulator) -> None:
    adapter, connector = SoapAdapter(), _connector(erp)
    adapter.send(connector, _delivery({**JOURNAL, "external_reference": "warm-up"}))  # WSDL loaded
    erp.forced_status = 503
    with pytest.raises(ConnectorError) as caught:
        adapter.send(connector, _delivery())
    assert not caught.value.permanent
    assert "503" in caught.value.message


def test_a_timeout_is_transient(erp: SoapErpSimulator) -> None:
    adapter, connector = SoapAdapter(), _connector(erp)
    connector.timeout_seconds = 0.5
    adapter.send(connector, _delivery({**JOURNAL, "external_reference": "warm-up"}))
    erp.delay_seconds = 2
    with pytest.raises(ConnectorError) as caught:
        adapter.send(connector, _delivery())
    assert not caught.value.permanent
    assert "did not answer" in caught.value.message


def test_an_unreachable_wsdl_is_transient() -> None:
    clients.clear()
    connector = Connector(
        code="erp-down",
        protocol=Protocol.SOAP,
        direction=Direction.OUTBOUND,
        timeout_seconds=1,
        config={"wsdl": "http://127.0.0.1:1/x?wsdl", "operations": {"post_journal": {"operation": "X"}}},
    )
    with pytest.raises(ConnectorError) as caught:
        SoapAdapter().send(connector, _delivery())
    assert not caught.value.permanent


def test_basic_auth_and_ws_security_send_the_secret(erp: SoapErpSimulator) -> None:
    basic = _connector(erp, auth={"type": "basic", "username": "isu"})
    basic.secrets = {"password": "s3cret"}
    SoapAdapter().send(basic, _delivery())
    assert erp.last_authorization == "Basic " + base64.b64encode(b"isu:s3cret").decode()
    wsse = _connector(erp, auth={"type": "wsse", "username": "isu_hs"})
    wsse.secrets = {"password": "s3cret"}
    SoapAdapter().send(wsse, _delivery({**JOURNAL, "external_reference": "other"}))
    assert erp.last_wsse_username == "isu_hs"
    missing = _connector(erp, auth={"type": "wsse", "username": "isu_hs"})
    with pytest.raises(ConnectorError, match="no password"):
        SoapAdapter().send(missing, _delivery())


def test_an_endpoint_override_is_used(erp: SoapErpSimulator) -> None:
    with SoapErpSimulator() as tenant:
        result = SoapAdapter().send(_connector(erp, endpoint=tenant.endpoint), _delivery())
        assert result.external_id in tenant.journals
    assert erp.journals == {}


def test_test_connection_checks_the_operations(erp: SoapErpSimulator) -> None:
    ok, detail = SoapAdapter().test_connection(_connector(erp))
    assert ok and "Submit_Accounting_Journal" in detail
    wrong = _connector(erp)
    wrong.config["operations"]["post_journal"]["operation"] = "Submit_Nothing"
    ok, detail = SoapAdapter().test_connection(wrong)
    assert not ok and "Submit_Nothing" in detail


def test_config_errors_are_specific() -> None:
    errors = SoapAdapter().validate_config(
        Direction.OUTBOUND,
        {
            "wsdl": "ftp://x",
            "operations": {"p": {"operation": "X", "request": "magic"}},
            "auth": {"type": "x"},
        },
    )
    assert errors == [
        "wsdl must be an http:// or https:// URL",
        "operation p: request must be one of workday_journal, passthrough",
        "auth.type must be basic or wsse",
    ]
    assert SoapAdapter().validate_config(Direction.INBOUND, {})


@pytest.mark.django_db
def test_a_journal_delivery_runs_end_to_end(erp: SoapErpSimulator) -> None:
    system = System.objects.create(code="erp", name="ERP", kind="erp")
    connector = Connector.objects.create(
        system=system,
        code="erp-soap",
        name="ERP SOAP",
        direction=Direction.OUTBOUND,
        protocol=Protocol.SOAP,
        timeout_seconds=2,
        config=_config(erp),
    )
    connector.full_clean()
    delivery = Delivery.objects.create(
        connector=connector, operation="post_journal", idempotency_key="k-1", payload=JOURNAL
    )
    assert deliver(delivery.pk) == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    assert delivery.external_id in erp.journals
    bad = Delivery.objects.create(
        connector=connector,
        operation="post_journal",
        idempotency_key="k-2",
        payload={**JOURNAL, "external_reference": "x", "lines": JOURNAL["lines"][:1]},
    )
    assert deliver(bad.pk) == DeliveryStatus.FAILED
