"""Run the reference ERP simulator the demo delivers to."""

from __future__ import annotations

from connectors.management.simulator_command import SimulatorCommand
from connectors.simulators.erp import ErpSimulator


class Command(SimulatorCommand):
    help = "Run the reference ERP the demo posts journals to."
    simulator_class = ErpSimulator
    label = "ERP"
    default_port = 8102
