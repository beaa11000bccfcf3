"""Run the reference RCM simulator the demo delivers to."""

from __future__ import annotations

from connectors.management.simulator_command import SimulatorCommand
from connectors.simulators.rcm import RcmSimulator


class Command(SimulatorCommand):
    help = "Run the reference revenue-cycle (RCM) system the demo submits claims to."
    simulator_class = RcmSimulator
    label = "RCM"
    default_port = 8101
