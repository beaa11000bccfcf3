from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    name = "connectors"

    def ready(self) -> None:
        from connectors.database.adapter import DatabaseAdapter
        from connectors.fhir.adapter import FhirAdapter
        from connectors.fhir.mappings import fhir_mapping_definitions
        from connectors.files.adapter import FilesAdapter
        from connectors.hl7v2.adapter import HL7v2Adapter
        from connectors.rest.adapter import RestAdapter
        from connectors.soap.adapter import SoapAdapter
        from connectors.streams import publish as stream_publish
        from connectors.streams.adapter import StreamAdapter
        from connectors.x12.adapter import X12Adapter
        from healthsync.forms import config_forms
        from healthsync.jobs import JobSpec, register_job
        from healthsync.registry import connector_registry, reference_config

        connector_registry.register(HL7v2Adapter())
        connector_registry.register(RestAdapter())
        connector_registry.register(FhirAdapter())
        connector_registry.register(X12Adapter())
        connector_registry.register(FilesAdapter())
        connector_registry.register(DatabaseAdapter())
        connector_registry.register(SoapAdapter())
        connector_registry.register(StreamAdapter())
        stream_publish.connect()
        reference_config.add(mappings=fhir_mapping_definitions)
        register_job(
            JobSpec("fhir-poll", "connectors.fhir.tasks.poll_fhir_connectors", minutes=1, counter="polled")
        )
        register_job(JobSpec("files-poll", "connectors.files.poller.poll_all", minutes=1, counter="stored"))
        for kind in ("hl7v2", "fhir", "rest", "files", "x12", "database", "soap", "streams"):
            config_forms.register(import_module(f"connectors.{kind}.forms").config_form)
        register_job(
            JobSpec("database-poll", "connectors.database.poller.poll_all", minutes=1, counter="stored")
        )
        register_job(
            JobSpec("stream-consume", "connectors.streams.consumer.consume_all", minutes=1, counter="stored")
        )
