"""Run the small FHIR R4 server (a payer or EHR FHIR API) for the demo."""

from __future__ import annotations

from connectors.management.simulator_command import SimulatorCommand
from connectors.simulators.fhir_server import FhirServerSimulator


class Command(SimulatorCommand):
    help = (
        "Run a small in-memory FHIR R4 server: conditional create, update, _lastUpdated search with paging."
    )
    simulator_class = FhirServerSimulator
    label = "FHIR"
    default_port = 8103
