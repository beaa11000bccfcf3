"""A Workday-style SOAP ERP for tests and the demo: serves a WSDL and answers Submit_Accounting_Journal.

    sim = SoapErpSimulator("127.0.0.1", 0).start()
    GET  {sim.wsdl_url}                    → the WSDL (document/literal SOAP 1.1; the address is this server)
    POST {sim.endpoint} Submit_Accounting_Journal_Request
         → Submit_Accounting_Journal_Response with Accounting_Journal_Reference/ID = "JE-2026-000001"
         → SOAP Fault (HTTP 500, faultcode Client) for an unbalanced or incomplete journal
         → SOAP Fault for a reused External_Reference_ID, its detail naming the journal already posted, as
           Workday rejects a duplicate integration id instead of posting twice
    sim.stop()

`forced_status` (e.g. 503) makes every POST answer that plain HTTP status, `delay_seconds` holds every POST
that long (for timeout drills). `sim.journals` holds posted journals by document number.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import date
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from connectors.simulators.background import HttpServerThread

logger = logging.getLogger(__name__)

NS = "urn:com.healthsync/simulators/financial"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:tns="{ns}" targetNamespace="{ns}" name="Financial_Management">
  <wsdl:types>
    <xsd:schema targetNamespace="{ns}" elementFormDefault="qualified">
      <xsd:complexType name="Journal_Entry_Line_DataType">
        <xsd:sequence>
          <xsd:element name="Ledger_Account" type="xsd:string"/>
          <xsd:element name="Cost_Center" type="xsd:string" minOccurs="0"/>
          <xsd:element name="Debit_Amount" type="xsd:decimal"/>
          <xsd:element name="Credit_Amount" type="xsd:decimal"/>
          <xsd:element name="Memo" type="xsd:string" minOccurs="0"/>
        </xsd:sequence>
      </xsd:complexType>
      <xsd:complexType name="Accounting_Journal_DataType">
        <xsd:sequence>
          <xsd:element name="External_Reference_ID" type="xsd:string"/>
          <xsd:element name="Accounting_Date" type="xsd:date"/>
          <xsd:element name="Currency" type="xsd:string"/>
          <xsd:element name="Journal_Entry_Memo" type="xsd:string" minOccurs="0"/>
          <xsd:element name="Journal_Entry_Line_Data" type="tns:Journal_Entry_Line_DataType"
              maxOccurs="unbounded"/>
        </xsd:sequence>
      </xsd:complexType>
      <xsd:element name="Submit_Accounting_Journal_Request">
        <xsd:complexType><xsd:sequence>
          <xsd:element name="Accounting_Journal_Data" type="tns:Accounting_Journal_DataType"/>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
      <xsd:element name="Submit_Accounting_Journal_Response">
        <xsd:complexType><xsd:sequence>
          <xsd:element name="Accounting_Journal_Reference">
            <xsd:complexType><xsd:sequence><xsd:element name="ID" type="xsd:string"/></xsd:sequence>
            </xsd:complexType>
          </xsd:element>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="Submit_Accounting_JournalInput">
    <wsdl:part name="body" element="tns:Submit_Accounting_Journal_Request"/>
  </wsdl:message>
  <wsdl:message name="Submit_Accounting_JournalOutput">
    <wsdl:part name="body" element="tns:Submit_Accounting_Journal_Response"/>
  </wsdl:message>
  <wsdl:portType name="Financial_ManagementPort">
    <wsdl:operation name="Submit_Accounting_Journal">
      <wsdl:input message="tns:Submit_Accounting_JournalInput"/>
      <wsdl:output message="tns:Submit_Accounting_JournalOutput"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="Financial_ManagementBinding" type="tns:Financial_ManagementPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="Submit_Accounting_Journal">
      <soap:operation soapAction="Submit_Accounting_Journal"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="Financial_ManagementService">
    <wsdl:port name="Financial_Management" binding="tns:Financial_ManagementBinding">
      <soap:address location="{endpoint}"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""


class SoapFault(Exception):
    """A fault the simulator answers with: code (Client/Server), text, and an optional existing document."""

    def __init__(self, text: str, *, code: str = "Client", existing: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.existing = existing


class SoapErpSimulator(HttpServerThread):
    """Posts balanced journals once per External_Reference_ID; everything else is a SOAP fault."""

    name = "soap-erp-simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.journals: dict[str, dict[str, Any]] = {}
        self._by_reference: dict[str, str] = {}
        self._sequence = 0
        self.forced_status: int | None = None
        self.delay_seconds = 0.0
        # What the last POST carried in its Authorization header and WS-Security username (tests check auth).
        self.last_authorization = ""
        self.last_wsse_username = ""

    @property
    def endpoint(self) -> str:
        return f"{self.url}/ccx/service/Financial_Management"

    @property
    def wsdl_url(self) -> str:
        return f"{self.endpoint}?wsdl"

    def submit(self, body: bytes) -> str:
        """Post the journal in a SOAP request; returns the document number or raises SoapFault."""
        try:
            envelope = etree.fromstring(body, parser=_PARSER)
        except etree.XMLSyntaxError as exc:
            raise SoapFault(f"The request is not XML: {exc.msg}") from None
        username = envelope.find(".//{*}UsernameToken/{*}Username")
        self.last_wsse_username = username.text or "" if username is not None else ""
        data = envelope.find(f".//{{{NS}}}Submit_Accounting_Journal_Request/{{{NS}}}Accounting_Journal_Data")
        if data is None:
            raise SoapFault("The body holds no Submit_Accounting_Journal_Request/Accounting_Journal_Data")
        journal = _read_journal(data)
        with self.lock:
            existing = self._by_reference.get(journal["external_reference"])
            if existing:
                raise SoapFault(
                    f"Duplicate External_Reference_ID {journal['external_reference']}: already posted as {existing}",
                    existing=existing,
                )
            self._sequence += 1
            number = f"JE-{date.today().year}-{self._sequence:06d}"
            self.journals[number] = journal
            self._by_reference[journal["external_reference"]] = number
        return number

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "HealthSync-soap-erp/1.0"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                with simulator.lock:
                    simulator.requests[f"GET {path}"] += 1
                if path != "/ccx/service/Financial_Management" or query.lower() != "wsdl":
                    self._send(404, b"not found", "text/plain")
                    return
                text = WSDL.format(ns=NS, endpoint=escape(simulator.endpoint))
                self._send(200, text.encode(), "text/xml; charset=utf-8")

            def do_POST(self) -> None:
                path = self.path.partition("?")[0]
                with simulator.lock:
                    simulator.requests[f"POST {path}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                simulator.last_authorization = self.headers.get("Authorization", "")
                if simulator.delay_seconds:
                    time.sleep(simulator.delay_seconds)
                if simulator.forced_status is not None:
                    self._send(simulator.forced_status, b"Service Unavailable", "text/plain")
                    return
                if path != "/ccx/service/Financial_Management":
                    self._send(404, b"not found", "text/plain")
                    return
                try:
                    number = simulator.submit(body)
                except SoapFault as fault:
                    self._send(500, _fault_xml(fault), "text/xml; charset=utf-8")
                    return
                self._send(200, _response_xml(number), "text/xml; charset=utf-8")

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout drill)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s %s", simulator.name, format % args)

        return Handler


def _text(element: Any, name: str) -> str:
    found = element.find(f"{{{NS}}}{name}")
    return (found.text or "").strip() if found is not None else ""


def _read_journal(data: Any) -> dict[str, Any]:
    journal: dict[str, Any] = {
        "external_reference": _text(data, "External_Reference_ID"),
        "accounting_date": _text(data, "Accounting_Date"),
        "currency": _text(data, "Currency"),
        "memo": _text(data, "Journal_Entry_Memo"),
        "lines": [],
    }
    errors = [
        f"{name} is required"
        for name, key in (
            ("External_Reference_ID", "external_reference"),
            ("Accounting_Date", "accounting_date"),
            ("Currency", "currency"),
        )
        if not journal[key]
    ]
    debits = credits = Decimal(0)
    for index, line in enumerate(data.findall(f"{{{NS}}}Journal_Entry_Line_Data"), start=1):
        try:
            debit, credit = (
                Decimal(_text(line, "Debit_Amount") or "0"),
                Decimal(_text(line, "Credit_Amount") or "0"),
            )
        except InvalidOperation:
            errors.append(f"line {index}: Debit_Amount and Credit_Amount must be decimals")
            continue
        if not _text(line, "Ledger_Account"):
            errors.append(f"line {index}: Ledger_Account is required")
        debits, credits = debits + debit, credits + credit
        journal["lines"].append(
            {
                "account": _text(line, "Ledger_Account"),
                "cost_center": _text(line, "Cost_Center"),
                "debit": str(debit),
                "credit": str(credit),
            }
        )
    if len(journal["lines"]) < 2:
        errors.append("a journal needs at least two Journal_Entry_Line_Data")
    if not errors and debits != credits:
        errors.append(f"the journal does not balance: debits {debits} ≠ credits {credits}")
    if errors:
        raise SoapFault("Validation error: " + "; ".join(errors))
    return journal


def _fault_xml(fault: SoapFault) -> bytes:
    detail = ""
    if fault.existing:
        detail = (
            f'<detail><wd:Duplicate_Reference xmlns:wd="{NS}"><wd:ID>{escape(fault.existing)}</wd:ID>'
            "</wd:Duplicate_Reference></detail>"
        )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body>'
        f"<soapenv:Fault><faultcode>soapenv:{fault.code}</faultcode><faultstring>{escape(fault.text)}</faultstring>"
        f"{detail}</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    ).encode()


def _response_xml(number: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}"><soapenv:Body>'
        f'<wd:Submit_Accounting_Journal_Response xmlns:wd="{NS}"><wd:Accounting_Journal_Reference>'
        f"<wd:ID>{escape(number)}</wd:ID></wd:Accounting_Journal_Reference></wd:Submit_Accounting_Journal_Response>"
        "</soapenv:Body></soapenv:Envelope>"
    ).encode()


def main() -> None:  # pragma: no cover - manual use: python -m connectors.simulators.soap_erp
    import os

    SoapErpSimulator("127.0.0.1", int(os.getenv("PORT", "8104"))).serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
