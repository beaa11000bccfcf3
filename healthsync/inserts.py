"""Insert a row unless its unique key is taken, in one round trip and without a savepoint.

The hot path (events, deliveries, workflow runs) asks "create this unless it exists" for every message. Django's
way (a savepoint, an INSERT, an IntegrityError, a rollback to the savepoint, a SELECT) costs three to five round
trips; on PostgreSQL `INSERT … ON CONFLICT DO NOTHING RETURNING` answers in one, and a conflicting row simply is
not inserted, so the surrounding transaction stays usable. post_save is sent for an inserted row as `save()`
would (apps listen: the event-stream publisher, the KPI rollups); pre_save is not.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from operator import itemgetter
from typing import Any, NamedTuple
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.db.models import (
    BooleanField,
    CharField,
    DateTimeField,
    DecimalField,
    Field,
    IntegerField,
    JSONField,
    Model,
    TextField,
    UUIDField,
)
from django.db.models.constants import OnConflict
from django.db.models.signals import post_save
from django.db.models.sql import InsertQuery

from healthsync import unitofwork

# INSERT … ON CONFLICT DO NOTHING RETURNING pk per (model, inserted columns).
_SQL: dict[tuple[type[Model], tuple[str, ...]], str] = {}
# Models whose inserts a chunk's unit of work may defer (see defer_in_chunks).
_DEFERRED: set[type[Model]] = set()
# Primary keys taken from the sequence at a time for deferred rows. A process keeps what a chunk did not use
# for the next chunk (a sequence never hands out a value twice, committed or not); ids left at exit are gaps.
ID_BLOCK = 64
_SPARE_IDS: dict[type[Model], deque[int]] = defaultdict(deque)


class RepeatInChunk(IntegrityError):
    """A row deferred as new met an existing unique key when the chunk wrote it: the chunk must be redone."""


def defer_in_chunks(model: type[Model]) -> None:
    """Within a processing chunk's unit of work, `insert_if_new` of `model` rows is deferred to the chunk's end.

    For rows that are new in all but rare cases (deliveries: their idempotency key is derived from an event
    that was itself new). The row gets its primary key from the sequence at once and post_save is sent as
    before; the chunk writes all such rows in one statement. Should a key exist after all, the flush raises
    RepeatInChunk and the chunk is redone a savepoint per message, without a unit of work, where
    `insert_if_new` answers from the table as usual.
    """
    _DEFERRED.add(model)


def insert_if_new(obj: Model) -> bool:
    """Insert `obj`; True when it was inserted (its pk is then set), False when a unique key already exists.

    On databases without ON CONFLICT … RETURNING the insert runs in a savepoint and a unique violation is
    caught, so the answer is the same. Field values must be plain values, not expressions (F(), Now()).
    A row of a model registered with `defer_in_chunks` may be written later in the same transaction.
    """
    meta = obj._meta
    if obj.__class__ in _DEFERRED and connection.vendor == "postgresql":
        unit = unitofwork.current()
        if unit is not None:
            _defer(unit, obj)
            return True
    if connection.vendor != "postgresql":
        try:
            with transaction.atomic():
                obj.save(force_insert=True)
        except IntegrityError:
            return False
        return True
    fields = [f for f in meta.local_concrete_fields if not f.generated]
    if obj.pk is None:
        fields = [f for f in fields if f is not meta.auto_field]
    cache_key = (obj.__class__, tuple(f.attname for f in fields))
    sql = _SQL.get(cache_key)
    if sql is None:
        # Django writes the statement once per model (quoting, placeholders, RETURNING); each row then only
        # needs its values prepared the way the insert compiler prepares them.
        query = InsertQuery(obj.__class__, on_conflict=OnConflict.IGNORE)
        query.insert_values(fields, [obj])
        compiler = query.get_compiler(connection=connection)
        compiler.returning_fields = [meta.pk]
        ((sql, _),) = compiler.as_sql()
        _SQL[cache_key] = sql
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row: Any = cursor.fetchone()
    if row is None:
        return False
    obj.pk = meta.pk.to_python(row[0])
    obj._state.adding = False
    obj._state.db = connection.alias
    send_created(obj)
    return True


def insert_many_if_new(
    objs: Sequence[Model], *, key: Sequence[str], signal: bool = True, varying: Sequence[str] | None = None
) -> list[bool]:
    """Insert the rows of one model in one statement, skipping any whose unique key is taken.

    Returns, per object, whether it was inserted (its pk is then set). `key` names the fields of the unique
    key that decides a repeat; of two objects with the same key in `objs`, only the first is inserted. With
    `signal`, post_save is sent for each inserted row (in order) as `insert_if_new` does; without it the
    caller sends it (`send_created`) when the row's turn comes.

    With `varying`, the objects differ only in those fields (and their pks, if set): every other value is
    prepared once, from the first object, and sent once (a chunk's new workflow runs, alike but for their
    business key, cost a third less so). Inserted objects get the first one's auto_now values.
    """
    if not objs:
        return []
    if connection.vendor != "postgresql":
        inserted = []
        for obj in objs:
            ok = _insert_quietly(obj)
            inserted.append(ok)
            if ok and signal:
                send_created(obj)
        return inserted
    new_pks = any(obj.pk is None for obj in objs)
    statement = _object_insert(
        objs[0].__class__, new_pks, tuple(key), None if varying is None else tuple(varying)
    )
    params = [_rows_json(statement.columns, objs)]
    if statement.shared:
        params.append(_rows_json(statement.shared, objs[:1]))
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        rows = cursor.fetchall()
    pks = {tuple(row[1:]): row[0] for row in rows}
    key_names = [f.attname for f in statement.returning[1:]]
    # The values an insert took by pre_save (auto_now), which only the first object was asked for.
    taken = [(c.field.attname, getattr(objs[0], c.field.attname)) for c in statement.shared if c.pre_save]
    inserted = []
    for obj in objs:
        pk = pks.pop(tuple(getattr(obj, name) for name in key_names), None)
        if pk is None:
            inserted.append(False)
            continue
        _set_inserted(obj, pk)
        for name, value in taken:
            setattr(obj, name, value)
        inserted.append(True)
        if signal:
            send_created(obj)
    return inserted


def insert_many(objs: Sequence[Model], *, ignore_conflicts: bool = False) -> None:
    """Insert the rows of one model in one statement, as `bulk_create` does, sending no signals.

    Without compiling the statement anew on every call. The pks are set; a unique key already taken raises
    IntegrityError, unless `ignore_conflicts` skips such rows (then, as with bulk_create, no pk is set).
    """
    if not objs:
        return
    model = objs[0].__class__
    if connection.vendor != "postgresql":
        model._base_manager.bulk_create(objs, ignore_conflicts=ignore_conflicts)
        return
    statement = _object_insert(
        model, any(obj.pk is None for obj in objs), () if ignore_conflicts else None, None
    )
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, [_rows_json(statement.columns, objs)])
        rows = cursor.fetchall()
    if ignore_conflicts:
        return
    # PostgreSQL returns the rows of an INSERT … SELECT in the order it inserts them (Django's bulk_create
    # relies on it too).
    for obj, (pk,) in zip(objs, rows, strict=True):
        _set_inserted(obj, pk)


def _set_inserted(obj: Model, pk: Any) -> None:
    obj.pk = obj._meta.pk.to_python(pk)
    obj._state.adding = False
    obj._state.db = connection.alias


def insert_rows(
    model: type[Model], names: Sequence[str], rows: Sequence[Sequence[Any] | dict[str, Any]]
) -> None:
    """Insert rows given as plain values of `model`'s fields `names`, in one statement, sending no signals.

    A row is a tuple of values in the order of `names` or a dict by name; values are written as they are
    (no defaults, no auto_now) and columns not named get the table's default. For writes that need no model
    object per row (a chunk's new workflow steps): building the objects cost more than the insert.
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        objs = [
            model(**(row if isinstance(row, dict) else dict(zip(names, row, strict=True)))) for row in rows
        ]
        model._base_manager.bulk_create(objs)
        return
    statement = _insert_statement(model, tuple(names))
    keys: Sequence[int | str] = names if isinstance(rows[0], dict) else range(len(names))
    values = [list(map(itemgetter(key), rows)) for key in keys]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, [_values_json(statement.columns, values)])


class _Insert(NamedTuple):
    """An INSERT … SELECT from rows as JSON (`_values_json`) and how its parameters are made."""

    sql: str
    # The columns of the rows parameter, then of the one-row parameter of values all rows share (if any).
    columns: tuple[_Column, ...]
    shared: tuple[_Column, ...]
    returning: tuple[Field, ...]


@functools.cache
def _object_insert(
    model: type[Model], new_pks: bool, key: tuple[str, ...] | None, varying: tuple[str, ...] | None
) -> _Insert:
    """The insert of model objects, with their values taken as the insert compiler takes them (pre_save).

    With `new_pks` the pk is left to its sequence. With a `key` (empty or not), rows whose unique key is taken
    are skipped and the statement returns the pk and the key of each inserted row, else the pk of every row.
    With `varying`, only those fields (and a pk given) come per row; the others come once, shared.
    """
    meta = model._meta
    names = [f.attname for f in meta.local_concrete_fields if not f.generated]
    if new_pks:
        names.remove(meta.pk.attname)
    shared: tuple[str, ...] = ()
    if varying is not None:
        per_row = {meta.get_field(name).attname for name in varying} | {meta.pk.attname}
        shared = tuple(name for name in names if name not in per_row)
    return _insert_statement(
        model,
        tuple(names),
        shared=shared,
        skip_taken=key is not None,
        returning=("pk", *(key or ())),
        adding=True,
    )


@functools.cache
def _insert_statement(
    model: type[Model],
    names: tuple[str, ...],
    *,
    shared: tuple[str, ...] = (),
    skip_taken: bool = False,
    returning: tuple[str, ...] = (),
    adding: bool = False,
) -> _Insert:
    """INSERT of the fields `names` SELECTed from the rows as JSON (and the `shared` ones from a row of their own).

    With `skip_taken`, a row whose unique key is taken is skipped (ON CONFLICT DO NOTHING). With `adding`, an
    object's values are taken by pre_save. The text is the same whatever the number of rows.
    """
    meta = model._meta
    fields = [meta.get_field(name) for name in names]
    shared_fields = [f for f in fields if f.attname in shared]
    row_fields = [f for f in fields if f.attname not in shared]
    returned = tuple(meta.pk if name == "pk" else meta.get_field(name) for name in returning)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    source = _recordset(row_fields)
    if shared_fields:
        # A cross join with one row: its columns' names differ from the rows' ones.
        source += ", " + _recordset(shared_fields, alias="s")
    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) SELECT {columns} FROM {source}"  # noqa: S608 (identifiers from the model)
    if skip_taken:
        sql += " ON CONFLICT DO NOTHING"
    if returned:
        sql += " RETURNING " + ", ".join(quote(f.column) for f in returned)
    return _Insert(sql, _columns(row_fields, adding=adding), _columns(shared_fields, adding=adding), returned)


def _insert_quietly(obj: Model) -> bool:
    # Without `insert_if_new`'s signal: the caller decides when receivers hear of the row.
    try:
        with transaction.atomic():
            obj.__class__._base_manager.bulk_create([obj])  # sends no signals
    except IntegrityError:
        return False
    return True


def send_created(obj: Model) -> None:
    """Tell post_save receivers about a row inserted without `save()` (as `save()` would)."""
    post_save.send(
        sender=obj.__class__,
        instance=obj,
        created=True,
        update_fields=None,
        raw=False,
        using=connection.alias,
    )


def update_rows(objs: Sequence[Model], fields: Sequence[str]) -> None:
    """Write `fields` of many rows of one model from their in-memory values in one statement (no signals).

    On PostgreSQL one UPDATE … FROM the rows as JSON: `bulk_update`'s CASE per column costs far more to plan.
    """
    if not objs:
        return
    model = objs[0].__class__
    meta = model._meta
    if connection.vendor != "postgresql":
        model._base_manager.bulk_update(objs, list(fields), batch_size=200)
        return
    sql, columns = _update_statement(model, tuple(fields))
    ids = [meta.pk.get_db_prep_save(obj.pk, connection) for obj in objs]
    with connection.cursor() as cursor:
        cursor.execute(sql, [_rows_json(columns, objs), ids])


@functools.cache
def _update_statement(model: type[Model], names: tuple[str, ...]) -> tuple[str, tuple[_Column, ...]]:
    meta = model._meta
    quote = connection.ops.quote_name
    fields = [meta.pk, *(meta.get_field(name) for name in names)]
    pk = quote(meta.pk.column)
    sets = ", ".join(f"{quote(f.column)} = r.{quote(f.column)}" for f in fields[1:])
    sql = (
        f"UPDATE {quote(meta.db_table)} AS t SET {sets} "  # noqa: S608 (identifiers from the model)
        f"FROM {_recordset(fields)} WHERE t.{pk} = r.{pk} "
        # The join alone may be planned as a hash join over the whole table; the ids as a constant list make
        # it index look-ups.
        f"AND t.{pk} = ANY(%s::{_base_type(meta.pk)}[])"
    )
    return sql, _columns(fields, adding=False)


def _recordset(fields: Sequence[Field], alias: str = "r") -> str:
    """`json_to_recordset` of a parameter (made by `_values_json`) as a table `alias` with the fields' columns.

    Columns get their base type (varchar, numeric): the INSERT or UPDATE then checks length and precision
    as it does for any value, where a typed column here would truncate.
    """
    quote = connection.ops.quote_name
    columns = ", ".join(f"{quote(f.column)} {_base_type(f)}" for f in fields)
    return f"json_to_recordset(%s::json) AS {alias}({columns})"


def _base_type(field: Field) -> str:
    return field.db_type(connection).split("(")[0]


class _Column(NamedTuple):
    """How a field's values go into `_values_json`."""

    name: str
    field: Field
    # Whether an insert takes the value by pre_save (auto_now, auto_now_add), as the insert compiler does; an
    # update writes the values as they are, as update_rows always did.
    pre_save: bool
    convert: Callable[[Any], Any]


def _columns(fields: Sequence[Field], *, adding: bool) -> tuple[_Column, ...]:
    return tuple(
        _Column(f.column, f, adding and type(f).pre_save is not Field.pre_save, _converter(f)) for f in fields
    )


def _rows_json(columns: Sequence[_Column], objs: Sequence[Model]) -> str:
    """The objects' values as `_values_json` rows, taken by pre_save where the column says so."""
    values = []
    for _, field, pre_save, _ in columns:
        if pre_save:
            values.append([field.pre_save(obj, True) for obj in objs])
        else:
            attname = field.attname
            values.append([getattr(obj, attname) for obj in objs])
    return _values_json(columns, values)


def _values_json(columns: Sequence[_Column], values: Sequence[Sequence[Any]]) -> str:
    """The rows (given as one list of values per column) as one JSON document, each value what get_db_prep_save
    would send (see `_converter`).

    One parameter whatever the row count: psycopg converts a statement with a parameter per value afresh on
    every call (it caches only short ones), and escapes the elements of an array parameter one by one in
    Python, where `json.dumps` writes the whole document in C. JSON values (event data, payloads) are
    embedded as they are rather than dumped one by one.
    """
    names = [column.name for column in columns]
    converted = [
        [None if value is None else column.convert(value) for value in column_values]
        for column, column_values in zip(columns, values, strict=True)
    ]
    rows = [dict(zip(names, row, strict=True)) for row in zip(*converted, strict=True)]
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def _converter(field: Field) -> Callable[[Any], Any]:
    """A function from a value (not None) of `field` to the JSON value that json_to_recordset turns into what
    `field.get_db_prep_save` would have sent.

    get_db_prep_save returns most values as they are (a str for a CharField, an aware datetime, a UUID); it
    is called only for the others, which is most of the saving: it cost more than the statement.
    """
    if isinstance(field, JSONField):
        if field.encoder is None:
            return _same
        return lambda value: json.loads(json.dumps(value, cls=field.encoder))
    target = field.target_field if field.is_relation else field

    def prepared(value: Any) -> Any:
        return _json_scalar(field.get_db_prep_save(value, connection=connection))

    if isinstance(target, (CharField, TextField)):
        # Any str, as CharField.to_python takes it (a TextChoices member is written as its value).
        return lambda value: value if isinstance(value, str) else prepared(value)
    if isinstance(target, BooleanField):
        return lambda value: value if type(value) is bool else prepared(value)
    if isinstance(target, IntegerField):
        return lambda value: value if type(value) is int else prepared(value)
    if isinstance(target, DateTimeField):
        return lambda value: (
            str(value) if type(value) is datetime and value.utcoffset() is not None else prepared(value)
        )
    if isinstance(target, UUIDField):
        return lambda value: str(value) if type(value) is UUID else prepared(value)
    if isinstance(target, DecimalField):
        return lambda value: str(value) if type(value) is Decimal and value.is_finite() else prepared(value)
    return prepared


def _same(value: Any) -> Any:
    return value


def _json_scalar(value: Any) -> Any:
    # PostgreSQL reads the text of a date, time, number or UUID exactly as it reads the adapted value; a str or
    # int subclass (a choices member) is written as its value, as psycopg dumps it.
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, (date, time, Decimal, UUID, float)):
        return str(value)
    raise TypeError(f"{type(value).__name__} values cannot be written as JSON rows")


def _defer(unit: unitofwork.UnitOfWork, obj: Model) -> None:
    meta = obj._meta
    if obj.pk is None:
        ids = _SPARE_IDS[obj.__class__]
        if not ids:
            ids.extend(_next_ids(obj.__class__, ID_BLOCK))
        obj.pk = ids.popleft()
    # Values are taken now, as an immediate insert would (auto_now fields, defaults).
    for f in meta.local_concrete_fields:
        f.pre_save(obj, True)
    obj._state.adding = False
    obj._state.db = connection.alias
    unit.pending(f"inserts.{meta.label}", list, _write_deferred).append(obj)
    send_created(obj)


def _next_ids(model: type[Model], count: int) -> list[int]:
    meta = model._meta
    with connection.cursor() as cursor:
        cursor.execute(
            # The sequence's name looked up once (an init plan), not once per id.
            "SELECT nextval((SELECT pg_get_serial_sequence(%s, %s))::regclass) FROM generate_series(1, %s)",
            [meta.db_table, meta.pk.column, count],
        )
        return [row[0] for row in cursor.fetchall()]


def _write_deferred(objs: list[Model]) -> None:
    inserted = insert_many_if_new(objs, key=[objs[0]._meta.pk.name], signal=False)
    if not all(inserted):
        raise RepeatInChunk(
            f"{objs[0]._meta.label} rows deferred as new already existed; the chunk is redone message by message"
        )
