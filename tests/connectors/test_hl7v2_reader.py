"""The fast HL7 v2 reader, checked field by field against hl7apy on a varied corpus, plus property tests."""

from __future__ import annotations

import re

import pytest
from hl7apy.base_datatypes import TextualDataType
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.hl7v2.ack import MLLPDecoder, build_ack, build_batch_ack, fast_ack, mllp_frame
from connectors.hl7v2.reader import (
    Encoding,
    HL7Message,
    HL7ParseError,
    escape,
    parse,
    read_header,
    split_batch,
)

# hl7apy drops empty repetitions (a~~b), which would shift repetition numbers, so the corpus has none.
CORPUS: dict[str, str] = {
    "adt_a01_v251": "\r".join(
        [
            "MSH|^~\\&|EPIC|GENHOSP|HEALTHSYNC|HS|20250101120000||ADT^A01^ADT_A01|A01-0001|P|2.5.1",
            "EVN|A01|20250101120000",
            "PID|1||MRN001^^^GENHOSP^MR~555-11-2222^^^SSA^SS||DOE^JANE^Q^^DR||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701",
            "PV1|1|I|4W^401^1^GENHOSP||||1234^SMITH^JOHN^^^DR|||MED||||||||V0001^^^GENHOSP^VN|BC",
            "IN1|1|PLAN01|BCBS01|BLUE CROSS|||||GRP9||||20250101|20251231",
        ]
    ),
    "adt_a03_v23_lf": "\n".join(
        [
            "MSH|^~\\&|CERNER|MERCY|HEALTHSYNC|HS|20250102083000||ADT^A03|A03-77|P|2.3",
            "EVN|A03|20250102083000",
            "PID|1||MRN002^^^MERCY^MR||ROE^RICHARD||19550505|M",
            "PV1|1|I|3E^301^2||||||||||||||||V0002|||||||||||||||||||01||||||||20241228090000|20250102080000",
        ]
    ),
    "adt_a04_v24_crlf": "\r\n".join(
        [
            "MSH|^~\\&|MEDITECH|CLINIC|HEALTHSYNC|HS|202501031000||ADT^A04^ADT_A01|A04-9|P|2.4",
            "EVN|A04|202501031000",
            "PID|1||MRN003^^^CLINIC^MR||O\\T\\BRIEN^SEAN||19900909|M",
            "PV1|1|O|CLINIC^^^MAIN||||||||||||||||V0003",
        ]
    ),
    "adt_a08_v26_escapes": "\r".join(
        [
            "MSH|^~\\&|EPIC|GENHOSP|HEALTHSYNC|HS|20250104110000||ADT^A08^ADT_A01|A08-1|P|2.6",
            "EVN|A08|20250104110000",
            "PID|1||MRN004^^^GENHOSP^MR||SMITH\\S\\JONES^ANN\\F\\MARIE||19700101|F",
            "NTE|1||pipe \\F\\ caret \\S\\ amp \\T\\ tilde \\R\\ backslash \\E\\ hex \\X41\\ end",
            "PV1|1|E|ED^01^01",
        ]
    ),
    "dft_p03_v251": "\r".join(
        [
            "MSH|^~\\&|EPIC|GENHOSP|RCM|RCM|20250105120000||DFT^P03^DFT_P03|P03-5|P|2.5.1",
            "EVN|P03|20250105120000",
            "PID|1||MRN001^^^GENHOSP^MR||DOE^JANE",
            "PV1|1|I|4W^401^1||||||||||||||||V0001",
            "FT1|1|CHG001||20250104|20250105|CG|CDM100^CBC^LOCAL|||1|25.00^USD|25.00^USD|LAB||||||I10^Essential hypertension^I10|||||85025^CBC^CPT",
            "FT1|2|CHG002||20250104|20250105|CG|CDM200^XRAY^LOCAL|||2|300.00^USD|150.00^USD|RAD",
        ]
    ),
    "oru_r01_v251_subcomponents": "\r".join(
        [
            "MSH|^~\\&|LAB|GENHOSP|HEALTHSYNC|HS|20250106090000||ORU^R01^ORU_R01|R01-3|P|2.5.1",
            "PID|1||MRN001^^^GENHOSP&1.2.840.114350&ISO^MR||DOE^JANE",
            "OBR|1|ORD1|FIL1|85025^CBC^CPT",
            "OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL^grams per deciliter^UCUM|12.0-16.0|N|||F",
            "OBX|2|ST|8867-4^Heart rate^LN||72|/min|||||F",
        ]
    ),
    "bar_p05_v251_coding": "\r".join(
        [
            "MSH|^~\\&|3M|CODING|RCM|RCM|20250107100000||BAR^P05^BAR_P05|P05-2|P|2.5.1",
            "EVN|P05|20250107100000",
            "PID|1||MRN002^^^MERCY^MR||ROE^RICHARD",
            "PV1|1|I|3E^301^2||||||||||||||||V0002",
            "DG1|1||I21.4^NSTEMI^I10||20250101|F||||||||||1",
            "DG1|2||E11.9^Type 2 diabetes^I10||20250101|F||||||||||2",
            "PR1|1||02703ZZ^Dilation of coronary artery^I10P||20250101100000",
            "DRG|280^AMI W MCC^MS",
        ]
    ),
    "adt_a01_v27_zsegment": "\r".join(
        [
            "MSH|^~\\&|EPIC|GENHOSP|HEALTHSYNC|HS|20250108120000||ADT^A01^ADT_A01|Z-1|P|2.7",
            "EVN|A01|20250108120000",
            "PID|1||MRN005^^^GENHOSP^MR||LEE^MIN||19850303|F",
            "PV1|1|I|5N^501^1",
            "ZPI|1|custom^value&sub1&sub2~second^rep|flag",
        ]
    ),
    "adt_a01_v28": "\r".join(
        [
            "MSH|^~\\&|EPIC|GENHOSP|HEALTHSYNC|HS|20250109120000||ADT^A01^ADT_A01|V28-1|P|2.8",
            "EVN||20250109120000",
            "PID|1||MRN006^^^GENHOSP^MR||PARK^JI||19920202|M",
            "PV1|1|I|6S^601^1||||||||||||||||V0006",
        ]
    ),
    "adt_a03_v231": "\r".join(
        [
            "MSH|^~\\&|ALLSCRIPTS|NORTH|HEALTHSYNC|HS|20250110150000||ADT^A03|A03-231|P|2.3.1",
            "EVN|A03|20250110150000",
            "PID|1||MRN007^^^NORTH^MR||KIM^JOON||19600606|M",
            "PV1|1|I|2W^201^1||||||||||||||||V0007",
        ]
    ),
    "adt_a01_v25_latin1": "\r".join(
        [
            "MSH|^~\\&|SAP|KLINIK|HEALTHSYNC|HS|20250111120000||ADT^A01^ADT_A01|L1-1|P|2.5|||||DEU|8859/1",
            "EVN|A01|20250111120000",
            "PID|1||MRN008^^^KLINIK^MR||MÜLLER^JOSÉ||19750707|M",
            "PV1|1|I|1A^101^1",
        ]
    ),
}


def _encoded(name: str) -> bytes:
    return CORPUS[name].encode("latin-1" if "latin1" in name else "utf-8")


def _index(name: str | None, position: int) -> int:
    # hl7apy names known children after their datatype position (CX_4); unknown ones keep their order.
    match = re.search(r"_(\d+)$", name or "")
    return int(match.group(1)) if match else position


def _leaf(sub: object) -> str:
    datatype = getattr(sub, "value", None)
    if isinstance(datatype, TextualDataType):
        value = datatype.value  # as written, escapes and all
    elif hasattr(datatype, "to_er7"):
        value = datatype.to_er7()  # dates and numbers back in their wire form
    else:
        value = datatype
    return "" if value is None else str(value)


def hl7apy_leaves(text: str) -> list[tuple[str, str]]:
    """(reader path, expected value) for every sub-component hl7apy finds."""
    # hl7apy only splits segments on CR; line endings are the reader's business, not the reference's.
    text = re.sub(r"\r\n|\n", "\r", text)
    message = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    out: list[tuple[str, str]] = []
    occurrences: dict[str, int] = {}
    for segment in message.children:
        occurrences[segment.name] = occ = occurrences.get(segment.name, 0) + 1
        repetitions: dict[str, int] = {}
        for field in segment.children:
            number = int(field.name.rsplit("_", 1)[1])
            if segment.name == "MSH" and number in (1, 2):
                continue
            repetitions[field.name] = rep = repetitions.get(field.name, 0) + 1
            for c_pos, component in enumerate(field.children, start=1):
                comp = _index(component.name, c_pos)
                for s_pos, sub in enumerate(component.children, start=1):
                    s = _index(sub.name, s_pos) if len(component.children) > 1 else 1
                    path = f"{segment.name}[{occ}]-{number}[{rep}].{comp}.{s}"
                    out.append((path, _leaf(sub)))
    return out


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_it_reads_every_value_hl7apy_reads(name: str) -> None:
    message = parse(_encoded(name))
    leaves = hl7apy_leaves(message.text)

    assert len(leaves) > 10
    for path, expected in leaves:
        assert message.get(path) == message.encoding.unescape(expected), path


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_it_finds_the_same_segments_as_hl7apy(name: str) -> None:
    message = parse(_encoded(name))
    theirs = parse_message(
        re.sub(r"\r\n|\n", "\r", message.text), find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT
    )

    assert message.segment_names() == [s.name for s in theirs.children]


def test_it_reads_the_header_the_listener_needs() -> None:
    header = parse(_encoded("dft_p03_v251")).header

    assert header.control_id == "P03-5"
    assert header.message_type == "DFT^P03"
    assert header.sender == "EPIC^GENHOSP"
    assert header.receiving_application == "RCM"
    assert header.version == "2.5.1"
    assert header.processing_id == "P"


def test_it_reads_a_v23_message_type_without_structure() -> None:
    assert parse(_encoded("adt_a03_v23_lf")).header.message_type == "ADT^A03"


def test_it_unescapes_every_standard_sequence() -> None:
    message = parse(_encoded("adt_a08_v26_escapes"))

    assert message.get("NTE-3") == "pipe | caret ^ amp & tilde ~ backslash \\ hex A end"
    assert message.get("PID-5.1") == "SMITH^JONES"
    assert message.get("PID-5.2") == "ANN|MARIE"
    assert parse(_encoded("adt_a04_v24_crlf")).get("PID-5.1") == "O&BRIEN"


def test_it_reads_repetitions_components_and_subcomponents() -> None:
    message = parse(_encoded("adt_a01_v27_zsegment"))

    assert message.get("ZPI-2.2.1") == "value"
    assert message.get("ZPI-2.2.3") == "sub2"
    assert message.get("ZPI-2[2].2") == "rep"
    assert message.get_all("ZPI-2[*].1") == ["custom", "second"]
    assert parse(_encoded("oru_r01_v251_subcomponents")).get("PID-3.4.2") == "1.2.840.114350"


def test_it_reads_every_occurrence_of_a_segment() -> None:
    message = parse(_encoded("bar_p05_v251_coding"))

    assert message.get_all("DG1[*]-3.1") == ["I21.4", "E11.9"]
    assert message.get("DG1[2]-3.2") == "Type 2 diabetes"
    assert message.get("DG1[3]-3.1") == ""


def test_it_decodes_latin1_when_msh18_says_8859_1() -> None:
    message = parse(_encoded("adt_a01_v25_latin1"))

    assert message.get("PID-5.1") == "MÜLLER"
    assert message.get("PID-5.2") == "JOSÉ"
    assert message.header.charset == "8859/1"


def test_it_reads_latin1_sent_without_msh18() -> None:
    raw = CORPUS["adt_a01_v25_latin1"].replace("|||||DEU|8859/1", "").encode("latin-1")

    assert parse(raw).get("PID-5.1") == "MÜLLER"


def test_it_decodes_hex_escapes_as_utf8_in_a_utf8_message() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|2.5.1\rNTE|1||caf\\XC3A9\\"

    assert parse(raw).get("NTE-3") == "café"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "100"),
        (b"hello world", "100"),
        (b"PID|1||MRN001\rPV1|1|I", "100"),
        (b"MSH|^~", "102"),
        (b"MSHA^~\\&|A|B", "102"),
        (b"MSH|^^\\&|A|B", "102"),
        (b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|1|P|2.5\rpid|1", "100"),
        (b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|1|P|2.5\x00", "102"),
        ("MSH|^~\\&|A|B|C|D|2025||ADT^A01|1|P|2.5|||||DEU|ASCII\rPID|1||É".encode("latin-1"), "102"),
    ],
)
def test_it_rejects_unusable_input_with_a_table_0357_code(raw: bytes, code: str) -> None:
    with pytest.raises(HL7ParseError) as caught:
        parse(raw)
    assert caught.value.code == code
    assert caught.value.message


def test_it_refuses_a_path_that_is_not_hl7() -> None:
    with pytest.raises(ValueError, match="Not an HL7 path"):
        parse(_encoded("adt_a01_v251")).get("PID.3")


# Properties ----------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(_text)
def test_escape_then_unescape_gives_the_value_back(value: str) -> None:
    assert Encoding().unescape(escape(value)) == value


@given(_text)
def test_an_escaped_value_survives_a_message_round_trip(value: str) -> None:
    raw = f"MSH|^~\\&|A|B|C|D|2025||ADT^A01|1|P|2.5.1\rPID|1||{escape(value)}^x&y~z|F".encode()
    message = parse(raw)

    assert message.get("PID-3.1") == value
    assert message.get("PID-3.2.2") == "y"
    assert message.get("PID-3[2]") == "z"
    assert message.get("PID-4") == "F"


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_message_or_a_parse_error(raw: bytes) -> None:
    _parse_without_crashing(raw)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_an_msh_give_a_message_or_a_parse_error(tail: bytes) -> None:
    _parse_without_crashing(b"MSH" + tail)
    _parse_without_crashing(b"MSH|^~\\&|" + tail)


def _parse_without_crashing(raw: bytes) -> None:
    try:
        message = parse(raw)
    except HL7ParseError as exc:
        assert exc.code in {"100", "101", "102"}
        return
    assert isinstance(message, HL7Message)
    header = message.header
    # Whatever was read, an ACK can be built for it.
    assert build_ack(header, "AA").startswith("MSH")


@given(st.lists(st.binary(max_size=80).filter(lambda b: b"\x1c\x0d" not in b), max_size=5), st.integers(1, 7))
def test_mllp_frames_survive_any_chunking(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(mllp_frame(p) for p in payloads)
    decoder = MLLPDecoder()
    frames = []
    for i in range(0, len(stream), chunk):
        frames += decoder.feed(stream[i : i + chunk])
    frames += decoder.close()

    assert [f.payload for f in frames] == payloads
    assert not any(f.junk for f in frames)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_header_agrees_with_path_reads(name: str) -> None:
    message = parse(_encoded(name))
    header = message.header

    assert header.sender == f"{message.get('MSH-3.1')}^{message.get('MSH-4.1')}"
    assert header.control_id == message.get("MSH-10")
    assert header.message_type.split("^") == [
        v for v in (message.get("MSH-9.1"), message.get("MSH-9.2")) if v
    ]
    assert header.version == message.get("MSH-12.1")
    assert header.charset == message.get("MSH-18")


# ACKs and MLLP framing ---------------------------------------------------------------------------------


def test_an_ack_for_garbage_has_an_empty_msa2_and_an_err_segment() -> None:
    segments = build_ack(None, "AR", text="not HL7", error_code="100").rstrip("\r").split("\r")

    assert segments[0].startswith("MSH|^~\\&|HEALTHSYNC|")
    assert segments[0].split("|")[8] == "ACK"
    assert segments[1] == "MSA|AR||not HL7"
    assert segments[2] == "ERR|||100^Segment sequence error^HL70357|E||||not HL7"


def test_an_ack_swaps_sender_and_receiver_and_echoes_the_version() -> None:
    header = parse(_encoded("adt_a03_v231")).header
    msh, msa = build_ack(header, "AA").split("\r")[:2]
    fields = msh.split("|")

    assert fields[2:6] == ["HEALTHSYNC", "HS", "ALLSCRIPTS", "NORTH"]
    assert fields[8] == "ACK^A03^ACK"
    assert fields[9] and fields[9] != "A03-231"
    assert fields[11] == "2.3.1"
    assert msa == "MSA|AA|A03-231|"


def test_an_enhanced_mode_ack_uses_commit_codes() -> None:
    header = parse(_encoded("dft_p03_v251")).header

    assert "\rMSA|CA|P03-5|" in build_ack(header, "AA", enhanced=True)
    assert "\rMSA|CE|P03-5|" in build_ack(header, "AE", enhanced=True)


def test_an_ack_refuses_an_unknown_code() -> None:
    with pytest.raises(ValueError, match="acknowledgement code"):
        build_ack(None, "OK")


def test_the_decoder_tolerates_a_block_without_its_start_byte() -> None:
    frames = MLLPDecoder().feed(b"MSH|^~\\&|A\x1c\x0d\x0bMSH|^~\\&|B\x1c\x0d")

    assert [f.payload for f in frames] == [b"MSH|^~\\&|A", b"MSH|^~\\&|B"]
    assert not any(f.junk for f in frames)


def test_the_decoder_returns_bytes_outside_a_block_as_junk() -> None:
    decoder = MLLPDecoder()
    frames = decoder.feed(b"\r\nGET / HTTP/1.1\x0bMSH|^~\\&|A\x1c\x0dtrailing")
    frames += decoder.close()

    assert [(f.payload, f.junk) for f in frames] == [
        (b"GET / HTTP/1.1", True),
        (b"MSH|^~\\&|A", False),
        (b"trailing", True),
    ]
    assert frames[0].reason


def test_the_decoder_cuts_an_oversized_block() -> None:
    frames = MLLPDecoder(max_frame_bytes=10).feed(b"\x0b" + b"x" * 20)

    assert len(frames) == 1 and frames[0].junk


# The listener's header-only path must agree with the full reader ----------------------------------------


def _header_or_error(raw: bytes) -> object:
    try:
        return parse(raw).header
    except HL7ParseError as exc:
        return ("error", exc.code)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_header_only_read_agrees_with_the_full_reader(name: str) -> None:
    raw = _encoded(name)
    quick = read_header(raw)
    if quick is not None:
        assert quick[0] == parse(raw).header


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
def test_the_header_only_read_handles_every_segment_ending(ending: bytes) -> None:
    raw = ending.join([b"MSH|^~\\&|EPIC|GH|HS|HS|2025||ADT^A01^ADT_A01|C1|P|2.5.1", b"PID|1", b"ZPI|x", b""])
    quick = read_header(raw)
    assert quick is not None
    assert quick[0] == parse(raw).header
    assert quick[0].control_id == "C1"


@pytest.mark.parametrize(
    "raw",
    [
        b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|C\\F\\1|P|2.5",  # escape in the header
        b"MSH|^~\\&|A~X|B|C|D|2025||ADT^A01|C1|P|2.5",  # repetition in the header
        b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|C1|P|2.5\rpid|1",  # bad segment name
        b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|C1|P|2.5\r PID|1",  # leading space
        b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|C1|P|2.5\x00",  # NUL byte
        b"MSH|^~\\&|\xe9|B|C|D|2025||ADT^A01|C1|P|2.5",  # non-ASCII header
        b"MSH|^~",  # too short
    ],
)
def test_the_header_only_read_leaves_anything_unusual_to_the_full_reader(raw: bytes) -> None:
    assert read_header(raw) is None


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_the_header_only_read_never_disagrees_on_arbitrary_input(tail: bytes) -> None:
    for raw in (b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|C1|P|2.5\r" + tail, b"MSH|^~\\&|" + tail):
        quick = read_header(raw)
        if quick is not None:
            assert _header_or_error(raw) == quick[0]


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("enhanced", [False, True])
def test_the_template_ack_equals_build_ack_but_for_time_and_control_id(name: str, enhanced: bool) -> None:
    header = parse(_encoded(name)).header
    ours, reference = fast_ack(header, "AA", enhanced=enhanced), build_ack(header, "AA", enhanced=enhanced)
    f = header.encoding.field

    def without_time_and_id(text: str) -> list[list[str]]:
        segments = [s.split(f) for s in text.split("\r")]
        segments[0][6] = segments[0][9] = ""
        return segments

    assert without_time_and_id(ours) == without_time_and_id(reference)
    assert (
        fast_ack(header, "AA").split(f)[9] != fast_ack(header, "AA").split(f)[9]
    )  # a fresh MSH-10 each time


BATCH = (
    b"FHS|^~\\&|EPIC|GH|||20250101||||FILE1\r"
    b"BHS|^~\\&|EPIC|GH|||20250101||||BATCH7\r"
    b"MSH|^~\\&|EPIC|GH|HS|HS|2025||ADT^A01^ADT_A01|B1|P|2.5.1\rPID|1||M1\rZPI|custom\r"
    b"MSH|^~\\&|EPIC|GH|HS|HS|2025||ADT^A03^ADT_A03|B2|P|2.3\nPID|1||M2\n"
    b"BTS|2\r"
    b"FTS|1\r"
)


def test_a_batch_splits_into_its_messages_byte_for_byte() -> None:
    batch = split_batch(BATCH)

    assert batch.messages == [
        b"MSH|^~\\&|EPIC|GH|HS|HS|2025||ADT^A01^ADT_A01|B1|P|2.5.1\rPID|1||M1\rZPI|custom\r",
        b"MSH|^~\\&|EPIC|GH|HS|HS|2025||ADT^A03^ADT_A03|B2|P|2.3\nPID|1||M2\n",
    ]
    assert batch.has_file_header and batch.batch_control_id == "BATCH7" and batch.declared_count == 2


@pytest.mark.parametrize("raw", [b"MSH|^~\\&|A", b"BHS|", b"BHSA^~\\&|x"])
def test_it_refuses_what_is_not_a_batch(raw: bytes) -> None:
    with pytest.raises(HL7ParseError):
        split_batch(raw)


def test_an_acknowledgement_batch_wraps_one_ack_per_message() -> None:
    headers = [parse(m).header for m in split_batch(BATCH).messages]
    text = build_batch_ack(
        [build_ack(h, "AA") for h in headers],
        encoding=Encoding(),
        reference_batch_id="BATCH7",
        file_envelope=True,
    )
    segments = [s.split("|") for s in text.rstrip("\r").split("\r")]

    assert [s[0] for s in segments] == ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "FTS"]
    assert segments[1][11] == "BATCH7"
    assert [s[2] for s in segments if s[0] == "MSA"] == ["B1", "B2"]
    assert segments[6][1] == "2"
