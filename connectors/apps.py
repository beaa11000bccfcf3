from __future__ import annotations

from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    name = "connectors"

    def ready(self) -> None:
        from connectors.hl7v2.adapter import HL7v2Adapter
        from connectors.rest.adapter import RestAdapter
        from healthsync.registry import connector_registry

        connector_registry.register(HL7v2Adapter())
        connector_registry.register(RestAdapter())
