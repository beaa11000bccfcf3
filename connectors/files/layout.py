"""Declared layouts for flat files: CSV columns or fixed-width fields, read and written the same way.

    {"format": "csv", "delimiter": ",", "header": true, "encoding": "utf-8",
     "fields": [{"name": "employee_id", "required": true}, {"name": "amount", "type": "decimal"}, ...]}
    {"format": "fixed", "encoding": "latin-1",
     "fields": [{"name": "account", "width": 10}, {"name": "amount", "width": 12, "type": "decimal",
                 "align": "right", "pad": "0"}, {"name": "date", "width": 8, "type": "date"}]}

Types: string (default), integer, decimal, date (ISO in records; "format" gives the file's, default %Y-%m-%d
for CSV and %Y%m%d for fixed width). A CSV with a header must name the declared columns (extra columns are
kept). Every problem names the line and the field: FileFormatError(message, line=, field=).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

FORMATS = ("csv", "fixed")
TYPES = ("string", "integer", "decimal", "date")


class FileFormatError(ValueError):
    """A file does not match its declared layout."""

    def __init__(self, message: str, *, line: int | None = None, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.field = field
        self.code = "FILE-LAYOUT"

    def __str__(self) -> str:
        return self.message


def validate_layout(layout: Any) -> list[str]:
    """Problems with a declared layout, in words a person can act on."""
    if not isinstance(layout, dict):
        return ["layout must be an object with format and fields"]
    errors: list[str] = []
    fmt = layout.get("format")
    if fmt not in FORMATS:
        errors.append("layout.format must be csv or fixed")
    fields = layout.get("fields")
    if not isinstance(fields, list) or not fields:
        return [*errors, "layout.fields must list the columns"]
    names: set[str] = set()
    for index, spec in enumerate(fields, start=1):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            errors.append(f"layout.fields[{index}] needs a name")
            continue
        name = spec["name"]
        if name in names:
            errors.append(f"layout field {name} is declared twice")
        names.add(name)
        if spec.get("type", "string") not in TYPES:
            errors.append(f"layout field {name}: type must be one of {', '.join(TYPES)}")
        if fmt == "fixed":
            width = spec.get("width")
            if not isinstance(width, int) or width <= 0:
                errors.append(f"layout field {name}: width must be a positive integer")
            if spec.get("align", "left") not in ("left", "right"):
                errors.append(f"layout field {name}: align must be left or right")
            if len(str(spec.get("pad", " "))) != 1:
                errors.append(f"layout field {name}: pad must be one character")
    if fmt == "csv" and len(str(layout.get("delimiter", ","))) != 1:
        errors.append("layout.delimiter must be one character")
    try:
        "".encode(str(layout.get("encoding", "utf-8")))
    except LookupError:
        errors.append("layout.encoding is not a known encoding")
    return errors


def read_records(data: bytes, layout: dict[str, Any]) -> list[dict[str, str]]:
    """The file's records as dicts of text, each value checked against its declared type."""
    encoding = str(layout.get("encoding", "utf-8"))
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"The file is not {encoding} text (byte {exc.start})", line=None) from None
    text = text.lstrip("\ufeff")
    if layout.get("format") == "fixed":
        return _read_fixed(text, layout)
    return _read_csv(text, layout)


def _read_csv(text: str, layout: dict[str, Any]) -> list[dict[str, str]]:
    fields = layout["fields"]
    names = [f["name"] for f in fields]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=str(layout.get("delimiter", ",")))
    records: list[dict[str, str]] = []
    header = names
    want_header = bool(layout.get("header", True))
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if want_header:
                want_header = False
                header = [cell.strip() for cell in row]
                missing = [n for n in names if n not in header]
                if missing:
                    raise FileFormatError(
                        f"Line {line}: the header lacks the column(s) {', '.join(missing)}",
                        line=line,
                        field=missing[0],
                    )
                continue
            if len(row) != len(header):
                raise FileFormatError(
                    f"Line {line}: {len(row)} columns where the header has {len(header)}", line=line
                )
            record = dict(zip(header, (cell.strip() for cell in row), strict=True))
            records.append(_checked(record, fields, line))
    except csv.Error as exc:
        raise FileFormatError(f"Line {reader.line_num}: {exc}", line=reader.line_num) from None
    return records


def _read_fixed(text: str, layout: dict[str, Any]) -> list[dict[str, str]]:
    fields = layout["fields"]
    width = sum(int(f["width"]) for f in fields)
    records = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(raw) != width:
            raise FileFormatError(
                f"Line {line}: {len(raw)} characters where the layout has {width}", line=line
            )
        record: dict[str, str] = {}
        start = 0
        for spec in fields:
            end = start + int(spec["width"])
            value = raw[start:end]
            pad = str(spec.get("pad", " "))
            value = value.lstrip(pad) if spec.get("align", "left") == "right" else value.rstrip(pad)
            if spec.get("align", "left") == "right" and pad == "0" and value == "" and raw[start:end]:
                value = "0"
            record[spec["name"]] = value.strip()
            start = end
        records.append(_checked(record, fields, line))
    return records


def _checked(
    record: dict[str, str], fields: list[dict[str, Any]], line: int, *, from_file: bool = True
) -> dict[str, str]:
    for spec in fields:
        name = spec["name"]
        value = record.get(name, "")
        if value == "":
            if spec.get("required"):
                raise FileFormatError(f"Line {line}: {name} is required but empty", line=line, field=name)
            continue
        kind = spec.get("type", "string")
        try:
            if kind == "integer":
                record[name] = str(int(value))
            elif kind == "decimal":
                # Implied decimals are a file convention; records handed to us for writing are plain numbers.
                record[name] = str(_decimal(value, spec) if from_file else Decimal(value))
            elif kind == "date":
                fmt = str(
                    spec.get("format") or ("%Y%m%d" if len(value) == 8 and value.isdigit() else "%Y-%m-%d")
                )
                record[name] = datetime.strptime(value, fmt).date().isoformat()
        except (ValueError, InvalidOperation):
            raise FileFormatError(
                f"Line {line}: {name} is not a valid {kind}", line=line, field=name
            ) from None
    return record


def _decimal(value: str, spec: dict[str, Any]) -> Decimal:
    number = Decimal(value.replace(",", "") if spec.get("thousands") else value)
    implied = spec.get("implied_decimals")
    if isinstance(implied, int) and implied > 0 and "." not in value:
        number = number.scaleb(-implied)
    return number


def write_records(records: list[dict[str, Any]], layout: dict[str, Any]) -> bytes:
    """The file for `records` in the declared layout; FileFormatError when a value does not fit."""
    fields = layout["fields"]
    encoding = str(layout.get("encoding", "utf-8"))
    checked = [
        _checked({f["name"]: _text(r.get(f["name"])) for f in fields}, fields, n, from_file=False)
        for n, r in enumerate(records, 1)
    ]
    if layout.get("format") == "fixed":
        lines = []
        for number, record in enumerate(checked, start=1):
            parts = []
            for spec in fields:
                value = _fixed_value(record[spec["name"]], spec)
                width = int(spec["width"])
                if len(value) > width:
                    raise FileFormatError(
                        f"Record {number}: {spec['name']} needs {len(value)} characters, the layout has {width}",
                        line=number,
                        field=spec["name"],
                    )
                pad = str(spec.get("pad", " "))
                parts.append(
                    value.rjust(width, pad)
                    if spec.get("align", "left") == "right"
                    else value.ljust(width, pad)
                )
            lines.append("".join(parts))
        return ("\n".join(lines) + "\n").encode(encoding)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=str(layout.get("delimiter", ",")), lineterminator="\n")
    if layout.get("header", True):
        writer.writerow([f["name"] for f in fields])
    for record in checked:
        writer.writerow([_csv_value(record[f["name"]], f) for f in fields])
    return out.getvalue().encode(encoding)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _fixed_value(value: str, spec: dict[str, Any]) -> str:
    if value and spec.get("type") == "date":
        return datetime.fromisoformat(value).strftime(str(spec.get("format") or "%Y%m%d"))
    if value and spec.get("type") == "decimal" and isinstance(spec.get("implied_decimals"), int):
        return str(int(Decimal(value).scaleb(int(spec["implied_decimals"]))))
    return value


def _csv_value(value: str, spec: dict[str, Any]) -> str:
    if value and spec.get("type") == "date" and spec.get("format"):
        return datetime.fromisoformat(value).strftime(str(spec["format"]))
    return value


def split_rows(data: bytes, layout: dict[str, Any]) -> list[bytes]:
    """One payload per record, each readable alone with the same layout (CSV rows keep the header line).

    Fixed-width lines are the file's own bytes; a CSV row is written again from its cells (same values,
    quoting may differ), because a quoted cell can span lines.
    """
    encoding = str(layout.get("encoding", "utf-8"))
    text = data.decode(encoding).lstrip("\ufeff")
    if layout.get("format") == "fixed":
        return [line.encode(encoding) + b"\n" for line in text.splitlines() if line.strip()]
    delimiter = str(layout.get("delimiter", ","))
    rows = [
        r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if any(c.strip() for c in r)
    ]
    header, body = (rows[:1], rows[1:]) if layout.get("header", True) else ([], rows)
    out = []
    for row in body:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
        writer.writerows([*header, row])
        out.append(buffer.getvalue().encode(encoding))
    return out
