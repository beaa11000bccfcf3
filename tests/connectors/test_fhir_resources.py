"""Reading FHIR: the path reader the mappings use, the checks on inbound resources, the Encounter mappings."""

from __future__ import annotations

import pytest

from connectors.fhir.adapter import FhirAdapter
from connectors.fhir.mappings import fhir_mapping_definitions
from connectors.fhir.paths import FhirPathReader
from connectors.fhir.resources import FhirInputError, check_resource, load_json
from connectors.fhir.samples import PATIENT, encounter, raw, transaction
from healthsync.choices import Direction
from healthsync.errors import MappingError
from healthsync.mapping import apply_rules
from healthsync.models import MappingRule


def test_it_reads_simple_paths_with_or_without_the_resource_type() -> None:
    reader = FhirPathReader(encounter())
    assert reader.get("Encounter.identifier[0].value") == "V1001"
    assert reader.get("identifier[0].value") == "V1001"
    assert reader.get("period.end") == "2026-11-24T15:30:00+00:00"
    assert reader.get("hospitalization.dischargeDisposition.coding[0].code") == "home"
    assert reader.get("class.code") == "IMP"


def test_a_list_without_an_index_reads_its_first_item_and_missing_elements_read_empty() -> None:
    reader = FhirPathReader(encounter())
    assert reader.get("identifier.value") == "V1001"
    assert reader.get("identifier[3].value") == ""
    assert reader.get("location[0].location.display") == ""
    assert reader.get("Patient.name[0].family") == ""


def test_star_paths_give_one_aligned_value_per_item() -> None:
    reader = FhirPathReader(encounter())
    assert reader.get_all("reasonCode[*].coding[0].code") == ["I10", "E119"]
    assert reader.get_all("reasonCode[*].coding[0].display") == ["Hypertension", ""]


def test_where_filters_on_a_field_value() -> None:
    reader = FhirPathReader(PATIENT)
    assert reader.get("identifier.where(system='urn:mrn').value") == "MRN-77"
    assert reader.get("identifier.where(system='urn:other').value") == ""


def test_on_a_bundle_a_resource_type_path_reads_that_entry() -> None:
    reader = FhirPathReader(transaction(PATIENT, encounter()))
    assert reader.get("Patient.name[0].given[0]") == "Mara"
    assert reader.get("Encounter.period.end") == "2026-11-24T15:30:00+00:00"
    assert reader.get("Claim.id") == ""


def test_it_rejects_a_malformed_path() -> None:
    with pytest.raises(ValueError, match="not a valid step"):
        FhirPathReader(encounter()).get("period..end")


def test_it_accepts_each_supported_type_and_files_encounters_under_their_status() -> None:
    checked = check_resource(encounter())
    assert (checked.resource_type, checked.resource_id, checked.message_type) == (
        "Encounter",
        "enc-1001",
        "Encounter/finished",
    )
    assert check_resource(PATIENT).message_type == "Patient"
    assert check_resource(transaction(PATIENT, encounter())).message_type == "Bundle/transaction"


@pytest.mark.parametrize(
    ("body", "status", "expression", "words"),
    [
        (b"{not json", 400, "", "not valid JSON"),
        (b"\xff\xfe", 400, "", "not UTF-8"),
        (b"[1, 2]", 400, "", "JSON object"),
        (b'{"id": "x"}', 400, "resourceType", "resourceType is required"),
        (b'{"resourceType": "Observation", "status": "final"}', 400, "resourceType", "not accepted"),
    ],
)
def test_it_rejects_what_is_not_a_supported_resource(
    body: bytes, status: int, expression: str, words: str
) -> None:
    with pytest.raises(FhirInputError) as caught:
        check_resource(load_json(body))
    assert caught.value.status == status
    issue = caught.value.issues[0]
    assert issue.expression == expression and words in issue.diagnostics


@pytest.mark.parametrize(
    ("resource", "expression", "words"),
    [
        (encounter(status="done"), "Encounter.status", "must be one of"),
        (encounter(status=None), "Encounter.status", "required"),
        (encounter(period={"end": "yesterday"}), "Encounter.period.end", "DateTime"),
        (encounter(**{"class": None}), "Encounter.class", "required"),
        (encounter(colour="blue"), "Encounter.colour", "Extra inputs"),
        ({"resourceType": "ChargeItem", "status": "paid"}, "ChargeItem.status", "must be one of"),
        ({"resourceType": "Claim", "status": "active"}, "Claim.", ""),
    ],
)
def test_it_names_the_exact_problem_in_an_invalid_resource(
    resource: dict, expression: str, words: str
) -> None:
    resource = {k: v for k, v in resource.items() if v is not None}
    with pytest.raises(FhirInputError) as caught:
        check_resource(resource)
    assert caught.value.status == 422
    assert any(i.expression.startswith(expression) and words in i.diagnostics for i in caught.value.issues), (
        caught.value.issues
    )


def test_a_problem_inside_a_bundle_is_located_by_entry() -> None:
    with pytest.raises(FhirInputError) as caught:
        check_resource(transaction(PATIENT, encounter(status="gone")))
    assert [i.expression for i in caught.value.issues] == ["Bundle.entry[1].resource.status"]


@pytest.mark.parametrize(
    ("bundle", "expression"),
    [
        ({"resourceType": "Bundle", "type": "collection", "entry": []}, "Bundle.type"),
        ({"resourceType": "Bundle", "type": "batch", "entry": []}, "Bundle.entry"),
        ({"resourceType": "Bundle", "type": "transaction"}, "Bundle.entry"),
        (
            {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": PATIENT}]},
            "Bundle.entry[0].request",
        ),
    ],
)
def test_it_rejects_a_bundle_that_is_not_a_usable_transaction(bundle: dict, expression: str) -> None:
    with pytest.raises(FhirInputError) as caught:
        check_resource(bundle)
    assert caught.value.issues[0].expression == expression


def test_the_url_type_must_match_the_body() -> None:
    with pytest.raises(FhirInputError) as caught:
        check_resource(PATIENT, expected_type="Encounter")
    assert caught.value.status == 400 and "URL names Encounter" in caught.value.issues[0].diagnostics


def _rules(code: str) -> list[MappingRule]:
    spec = next(s for s in fhir_mapping_definitions() if s["code"] == code)
    return [MappingRule(position=i, **rule) for i, rule in enumerate(spec["rules"])]


def test_the_finished_encounter_mapping_builds_a_discharge() -> None:
    parsed = FhirAdapter().parse(raw(transaction(PATIENT, encounter())))
    data = apply_rules(_rules("fhir-encounter-finished-discharged"), parsed).data
    assert data["encounter_id"] == "V1001"
    assert data["patient"] == {
        "mrn": "MRN-77",
        "family_name": "Rivers",
        "given_name": "Mara",
        "name": "Mara Rivers",
        "birth_date": "1970-03-02",
    }
    assert data["patient_class"] == "I"
    assert data["discharged_at"] == "2026-11-24T15:30:00+00:00"
    assert data["disposition"] == "home"
    assert data["diagnoses"] == [{"code": "I10", "description": "Hypertension"}, {"code": "E119"}]
    assert data["attending"] == {"id": "1234567893", "name": "Dr Ada Quill"}


def test_a_finished_encounter_without_an_end_is_missing_the_discharge_time() -> None:
    parsed = FhirAdapter().parse(raw(encounter(period={"start": "2026-11-20T08:00:00+00:00"})))
    with pytest.raises(MappingError) as caught:
        apply_rules(_rules("fhir-encounter-finished-discharged"), parsed)
    assert caught.value.missing == ["discharged_at"]


def test_the_adapter_header_gives_type_and_id() -> None:
    parsed = FhirAdapter().parse(raw(encounter()))
    assert (parsed.header.message_type, parsed.header.control_id) == ("Encounter/finished", "enc-1001")


def test_parse_raises_with_the_reason_for_bad_fhir() -> None:
    with pytest.raises(FhirInputError) as caught:
        FhirAdapter().parse(raw(encounter(status="bogus")))
    assert "Encounter.status" in caught.value.message


@pytest.mark.parametrize(
    ("direction", "config", "error"),
    [
        (Direction.OUTBOUND, {}, "base_url"),
        (Direction.OUTBOUND, {"base_url": "http://x", "operations": {"a": {"mode": "delete"}}}, "mode"),
        (Direction.OUTBOUND, {"base_url": "http://x", "auth": {"type": "oauth2"}}, "token_url"),
        (Direction.INBOUND, {"accepted_types": ["Observation"]}, "accepted_types"),
        (Direction.INBOUND, {"poll": {"resource_types": ["Encounter"]}}, "base_url"),
        (Direction.INBOUND, {"base_url": "http://x", "poll": {"resource_types": []}}, "poll.resource_types"),
        (Direction.INBOUND, {"api_key_header": ""}, "api_key_header"),
    ],
)
def test_it_rejects_bad_config(direction: str, config: dict, error: str) -> None:
    errors = FhirAdapter().validate_config(direction, config)
    assert any(error in e for e in errors), errors


def test_good_configs_have_no_errors() -> None:
    adapter = FhirAdapter()
    assert adapter.validate_config(Direction.INBOUND, {}) == []
    assert (
        adapter.validate_config(
            Direction.INBOUND,
            {"base_url": "https://f.example.org/r4", "poll": {"resource_types": ["Encounter"]}},
        )
        == []
    )
    assert (
        adapter.validate_config(
            Direction.OUTBOUND,
            {"base_url": "https://f.example.org/r4", "operations": {"claim": {"mode": "create"}}},
        )
        == []
    )
