"""Insert a row unless its unique key is taken, in one round trip and without a savepoint.

The hot path (events, deliveries, workflow runs) asks "create this unless it exists" for every message. Django's
way (a savepoint, an INSERT, an IntegrityError, a rollback to the savepoint, a SELECT) costs three to five round
trips; on PostgreSQL `INSERT … ON CONFLICT DO NOTHING RETURNING` answers in one, and a conflicting row simply is
not inserted, so the surrounding transaction stays usable. post_save is sent for an inserted row as `save()`
would (apps listen: the event-stream publisher, the KPI rollups); pre_save is not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import JSONField, Model
from django.db.models.constants import OnConflict
from django.db.models.signals import post_save
from django.db.models.sql import InsertQuery

from healthsync import unitofwork

# INSERT … ON CONFLICT DO NOTHING RETURNING pk per (model, inserted columns).
_SQL: dict[tuple[type[Model], tuple[str, ...]], str] = {}
# Models whose inserts a chunk's unit of work may defer (see defer_in_chunks).
_DEFERRED: set[type[Model]] = set()
# Primary keys taken from the sequence at a time for deferred rows (unused ones are simply never used).
ID_BLOCK = 64


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


def insert_many_if_new(objs: Sequence[Model], *, key: Sequence[str], signal: bool = True) -> list[bool]:
    """Insert the rows of one model in one statement, skipping any whose unique key is taken.

    Returns, per object, whether it was inserted (its pk is then set). `key` names the fields of the unique
    key that decides a repeat; of two objects with the same key in `objs`, only the first is inserted. With
    `signal`, post_save is sent for each inserted row (in order) as `insert_if_new` does; without it the
    caller sends it (`send_created`) when the row's turn comes.
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
    model = objs[0].__class__
    meta = model._meta
    fields = [f for f in meta.local_concrete_fields if not f.generated]
    if any(obj.pk is None for obj in objs):
        fields = [f for f in fields if f is not meta.auto_field]
    key_fields = [meta.get_field(name) for name in key]
    quote = connection.ops.quote_name
    # Rows as VALUES, each value a parameter prepared as the insert compiler prepares it. (Django's bulk
    # insert sends a column of values as one array, and psycopg escapes each quote of a JSON document in
    # an array element in Python: on event data that cost more than the insert itself.)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    returning = ", ".join(quote(f.column) for f in [meta.pk, *key_fields])
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES {', '.join([row] * len(objs))} ON CONFLICT DO NOTHING RETURNING {returning}"
    )
    params = [
        f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for obj in objs for f in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    pks = {tuple(row[1:]): row[0] for row in rows}
    inserted = []
    for obj in objs:
        pk = pks.pop(tuple(getattr(obj, f.attname) for f in key_fields), None)
        if pk is None:
            inserted.append(False)
            continue
        obj.pk = meta.pk.to_python(pk)
        obj._state.adding = False
        obj._state.db = connection.alias
        inserted.append(True)
        if signal:
            send_created(obj)
    return inserted


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

    On PostgreSQL one UPDATE … FROM (VALUES …): `bulk_update`'s CASE per column costs far more to plan.
    """
    if not objs:
        return
    model = objs[0].__class__
    meta = model._meta
    if connection.vendor != "postgresql":
        model._base_manager.bulk_update(objs, list(fields), batch_size=200)
        return
    quote = connection.ops.quote_name
    columns = [meta.get_field(name) for name in fields]
    pk_type = meta.pk.rel_db_type(connection) if meta.pk.is_relation else meta.pk.db_type(connection)
    # Rows as VALUES with a cast per value (the first row types the columns): arrays of JSON documents would
    # be escaped element by element in Python by psycopg.
    casts = [pk_type, *("jsonb" if isinstance(c, JSONField) else c.db_type(connection) for c in columns)]
    row = "(" + ", ".join(f"%s::{cast}" for cast in casts) + ")"
    params: list[Any] = []
    for obj in objs:
        params.append(meta.pk.get_db_prep_save(obj.pk, connection))
        for column in columns:
            value = getattr(obj, column.attname)
            if isinstance(column, JSONField):
                params.append(None if value is None else json.dumps(value, cls=column.encoder))
            else:
                params.append(column.get_db_prep_save(value, connection))
    pk = quote(meta.pk.column)
    names = ", ".join(["id", *(f"c{n}" for n in range(len(columns)))])
    sets = ", ".join(f"{quote(column.column)} = v.c{n}" for n, column in enumerate(columns))
    sql = (
        f"UPDATE {quote(meta.db_table)} AS t SET {sets} "  # noqa: S608 (identifiers from the model)
        f"FROM (VALUES {', '.join([row] * len(objs))}) AS v({names}) WHERE t.{pk} = v.id "
        # The join alone may be planned as a hash join over the whole table; the ids as a constant list make
        # it index look-ups.
        f"AND t.{pk} = ANY(%s::{pk_type}[])"
    )
    params.append([meta.pk.get_db_prep_save(obj.pk, connection) for obj in objs])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _defer(unit: unitofwork.UnitOfWork, obj: Model) -> None:
    meta = obj._meta
    if obj.pk is None:
        ids = unit.identity_map("inserts.ids").setdefault(obj.__class__, [])
        if not ids:
            ids.extend(_next_ids(obj.__class__, ID_BLOCK))
        obj.pk = ids.pop(0)
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
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [meta.db_table, meta.pk.column, count],
        )
        return [row[0] for row in cursor.fetchall()]


def _write_deferred(objs: list[Model]) -> None:
    inserted = insert_many_if_new(objs, key=[objs[0]._meta.pk.name], signal=False)
    if not all(inserted):
        raise RepeatInChunk(
            f"{objs[0]._meta.label} rows deferred as new already existed; the chunk is redone message by message"
        )
