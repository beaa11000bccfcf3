"""The declarative mapping engine: sources, targets, transforms and required fields."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from connectors.hl7v2.reader import parse
from connectors.simulators import hl7_builder
from healthsync.choices import Transform
from healthsync.errors import MappingError
from healthsync.mapping import apply_mapping, apply_rules, parse_hl7_datetime
from healthsync.models import MappingRule, MappingSet

A03 = parse(hl7_builder.adt_a03())


def rule(target: str, source: str = "", transform: str = "", argument: Any = None, **kw: Any) -> MappingRule:
    return MappingRule(target=target, source=source, transform=transform, argument=argument or {}, **kw)


def test_it_nests_dotted_targets() -> None:
    result = apply_rules([rule("encounter_id", "PV1-19.1"), rule("coverage.plan_id", "IN1-2.1")], A03)
    assert result.data == {"encounter_id": "V1001", "coverage": {"plan_id": "AET-PPO"}}


def test_it_builds_lists_of_objects_index_by_index() -> None:
    msg = parse(
        hl7_builder.adt_a03(
            diagnoses=[("I10", "Hypertension", "F"), ("E11.9", "", "W"), ("N17.9", "AKI", "")]
        )
    )
    result = apply_rules(
        [
            rule("diagnoses[].code", "DG1[*]-3.1"),
            rule("diagnoses[].description", "DG1[*]-3.2"),
            rule("diagnoses[].type", "DG1[*]-6"),
        ],
        msg,
    )
    # An empty description in the middle does not shift the later ones onto the wrong code.
    assert result.data["diagnoses"] == [
        {"code": "I10", "description": "Hypertension", "type": "F"},
        {"code": "E11.9", "type": "W"},
        {"code": "N17.9", "description": "AKI"},
    ]
    assert set(result.provenance) == {"diagnoses[].code", "diagnoses[].description", "diagnoses[].type"}


def test_it_builds_plain_lists_and_leaves_out_absent_optional_values() -> None:
    msg = parse(hl7_builder.adt_a03(include_diagnosis=False, include_insurance=False))
    result = apply_rules(
        [rule("codes[]", "DG1[*]-3.1"), rule("coverage.payer_id", "IN1-3.1"), rule("mrns[]", "PID-3[*].1")],
        msg,
    )
    assert result.data == {"mrns": ["MRN12345"]}


def test_a_fallback_source_uses_the_first_non_empty_path() -> None:
    msg = parse(hl7_builder.adt_a03(facility=""))
    result = apply_rules([rule("facility", "PV1-3.4|MSH-4.1")], msg)
    assert result.data["facility"] == "GENHOSP"


def test_hl7_datetime_keeps_an_explicit_offset() -> None:
    assert parse_hl7_datetime("20260101123000-0500").isoformat() == "2026-01-01T12:30:00-05:00"


@override_settings(TIME_ZONE="America/New_York")
def test_hl7_datetime_reads_naive_times_in_the_configured_zone() -> None:
    result = apply_rules([rule("admitted_at", "PV1-44", Transform.HL7_DATETIME)], A03)
    assert result.data["admitted_at"] == "2026-01-01T08:30:00-05:00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026", "2026-01-01T00:00:00+00:00"),
        ("202601021230", "2026-01-02T12:30:00+00:00"),
        ("20260102123005.25+0100", "2026-01-02T12:30:05.250000+01:00"),
    ],
)
def test_hl7_datetime_accepts_every_precision(value: str, expected: str) -> None:
    assert parse_hl7_datetime(value).isoformat() == expected


@pytest.mark.parametrize("value", ["2026-01-01", "20261301", "20260101250000", "yesterday", "20260101+2500"])
def test_hl7_datetime_refuses_what_is_not_a_timestamp(value: str) -> None:
    assert parse_hl7_datetime(value) is None


@pytest.mark.parametrize(
    ("transform", "argument", "source", "expected"),
    [
        (Transform.HL7_DATE, {}, "PID-7", "1980-02-14"),
        (Transform.DECIMAL, {}, "IN1-3.1|PV1-19", None),
        (Transform.UPPER, {}, "PID-5.1", "DOE"),
        (Transform.LOOKUP, {"table": {"I": "inpatient"}}, "PV1-2", "inpatient"),
        (Transform.LOOKUP, {"table": {"O": "outpatient"}, "default": "other"}, "PV1-2", "other"),
        (Transform.LOOKUP, {"table": {"O": "outpatient"}}, "PV1-2", "I"),
        (Transform.DEFAULT, {"value": "SELF"}, "PV1-99", "SELF"),
        (Transform.DEFAULT, {"value": "SELF"}, "PV1-2", "I"),
        (Transform.REGEX, {"pattern": r"^MRN(\d+)$", "group": 1}, "PID-3.1", "12345"),
        (Transform.REGEX, {"pattern": r"^X(\d+)$", "group": 1}, "PID-3.1", None),
        (Transform.CONCAT, {"sources": ["PID-5.2", "PID-5.1"], "separator": " "}, "", "Jane Doe"),
        (Transform.INTEGER, {}, "PV1-7.1", 1234567890),
    ],
)
def test_transforms(transform: str, argument: dict, source: str, expected: Any) -> None:
    if transform == Transform.DECIMAL:
        msg = parse(hl7_builder.dft_p03())
        result = apply_rules([rule("amounts[]", "FT1[*]-11", transform)], msg)
        assert result.data["amounts"] == ["3000.00", "250.50"]
        return
    result = apply_rules([rule("value", source, transform, argument)], A03)
    assert result.data.get("value") == expected


def test_concat_works_element_wise_on_repeating_segments() -> None:
    msg = parse(hl7_builder.dft_p03())
    result = apply_rules(
        [
            rule(
                "charges[].label",
                "FT1[*]-7.1",
                Transform.CONCAT,
                {"sources": ["FT1[*]-7.2"], "separator": " - "},
            )
        ],
        msg,
    )
    assert result.data["charges"] == [
        {"label": "300001 - Room and board, semi-private"},
        {"label": "450010 - Comprehensive metabolic panel"},
    ]


def test_it_names_every_missing_required_field() -> None:
    msg = parse(hl7_builder.adt_a03(encounter_id="", include_insurance=False))
    with pytest.raises(MappingError) as caught:
        apply_rules(
            [
                rule("encounter_id", "PV1-19.1", required=True),
                rule("coverage.payer_id", "IN1-3.1", required=True),
                rule("patient.mrn", "PID-3.1", required=True),
            ],
            msg,
        )
    assert caught.value.missing == ["encounter_id", "coverage.payer_id"]
    assert "encounter_id" in caught.value.message


def test_a_required_list_field_must_be_present_on_every_item() -> None:
    msg = parse(
        hl7_builder.dft_p03(charges=[{"charge_id": "C1", "amount": "1"}, {"charge_id": "", "amount": "2"}])
    )
    with pytest.raises(MappingError) as caught:
        apply_rules(
            [rule("charges[].charge_id", "FT1[*]-2", required=True), rule("charges[].amount", "FT1[*]-11")],
            msg,
        )
    assert caught.value.missing == ["charges[1].charge_id"]


def test_a_required_list_with_no_items_is_missing() -> None:
    msg = parse(hl7_builder.adt_a03(include_diagnosis=False))
    with pytest.raises(MappingError) as caught:
        apply_rules([rule("diagnoses[].code", "DG1[*]-3.1", required=True)], msg)
    assert caught.value.missing == ["diagnoses[].code"]


def test_an_unreadable_value_names_the_field_and_source_but_not_the_value() -> None:
    msg = parse(hl7_builder.adt_a03(discharge_time="SECRET-VALUE"))
    with pytest.raises(MappingError) as caught:
        apply_rules([rule("discharged_at", "PV1-45", Transform.HL7_DATETIME)], msg)
    assert "discharged_at" in caught.value.message
    assert "PV1-45" in caught.value.message
    assert "SECRET-VALUE" not in caught.value.message


def test_a_rule_edited_in_place_is_read_anew() -> None:
    # The engine keeps a worked-out plan on each rule; editing the rule in the same process must not reuse it.
    lookup = rule("value", "PV1-2", Transform.LOOKUP, {"table": {"I": "inpatient"}})
    assert apply_rules([lookup], A03).data == {"value": "inpatient"}

    lookup.argument["table"]["I"] = "admitted"
    assert apply_rules([lookup], A03).data == {"value": "admitted"}

    lookup.source = "PID-8"
    lookup.argument = {"table": {"F": "female"}}
    assert apply_rules([lookup], A03).data == {"value": "female"}

    lookup.target = "patient.sex"
    lookup.transform = Transform.UPPER
    assert apply_rules([lookup], A03).data == {"patient": {"sex": "F"}}


@pytest.mark.parametrize(
    ("bad_rule", "text"),
    [
        (rule("x", "not a path"), "not a valid source path"),
        (rule("x", "PID-3", Transform.REGEX, {"pattern": "("}), "regex pattern is invalid"),
        (rule("x", "PID-3", Transform.REGEX, {"pattern": "M", "group": 3}), "group"),
        (rule("x", "", Transform.CONCAT, {}), "concat needs"),
        (rule("x", "PID-3", "python"), "unknown transform"),
        (rule("x", "PID-5.1", Transform.DECIMAL), "not a decimal"),
        (rule("x", "PID-5.1", Transform.INTEGER), "not an integer"),
        (rule("x", "PID-5.1", Transform.HL7_DATE), "not an HL7 date"),
    ],
)
def test_a_broken_rule_is_a_mapping_error_not_a_crash(bad_rule: MappingRule, text: str) -> None:
    with pytest.raises(MappingError) as caught:
        apply_rules([bad_rule], A03)
    assert text in caught.value.message


@pytest.mark.django_db
def test_the_seeded_discharge_mapping_reads_a_whole_discharge() -> None:
    from healthsync.seed import seed_reference_config

    seed_reference_config()
    version = MappingSet.objects.get(message_type="ADT^A03").active_version
    result = apply_mapping(version, A03)
    data = result.event_data()
    assert data["encounter_id"] == "V1001"
    assert data["patient"] == {
        "mrn": "MRN12345",
        "family_name": "Doe",
        "given_name": "Jane",
        "name": "Jane Doe",
        "birth_date": "1980-02-14",
        "sex": "F",
    }
    assert data["attending"] == {"id": "1234567890", "name": "John Smith"}
    assert data["coverage"]["payer_name"] == "Aetna"
    assert data["coverage"]["policy_number"] == "POL123456"
    assert data["discharged_at"] == "2026-01-03T12:00:00+00:00"
    assert data["facility"] == "GENHOSP"
    assert [d["code"] for d in data["diagnoses"]] == ["I10", "E11.9"]
    assert result.envelope == {"occurred_at": "2026-01-03T12:00:00+00:00"}
    assert result.provenance["encounter_id"] == version.rules.get(target="encounter_id").pk
