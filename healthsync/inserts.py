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

# INSERT … ON CONFLICT DO NOTHING RETURNING pk per (model, inserted columns).
_SQL: dict[tuple[type[Model], tuple[str, ...]], str] = {}


def insert_if_new(obj: Model) -> bool:
    """Insert `obj`; True when it was inserted (its pk is then set), False when a unique key already exists.

    On databases without ON CONFLICT … RETURNING the insert runs in a savepoint and a unique violation is
    caught, so the answer is the same. Field values must be plain values, not expressions (F(), Now()).
    """
    meta = obj._meta
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
    query = InsertQuery(model, on_conflict=OnConflict.IGNORE)
    query.insert_values(fields, list(objs))
    compiler = query.get_compiler(connection=connection)
    compiler.returning_fields = [meta.pk, *key_fields]
    ((sql, params),) = compiler.as_sql()
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

    On PostgreSQL one UPDATE … FROM unnest(arrays): `bulk_update`'s CASE per column costs far more to plan.
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
    arrays, sets, params = [], [], []
    pk_type = meta.pk.rel_db_type(connection) if meta.pk.is_relation else meta.pk.db_type(connection)
    arrays.append(f"%s::{pk_type}[]")
    params.append([meta.pk.get_db_prep_save(obj.pk, connection) for obj in objs])
    for n, column in enumerate(columns):
        values = [getattr(obj, column.attname) for obj in objs]
        if isinstance(column, JSONField):
            # As text, cast per row: an array of JSON adapters is not something psycopg can send.
            arrays.append("%s::text[]")
            params.append([None if v is None else json.dumps(v, cls=column.encoder) for v in values])
            sets.append(f"{quote(column.column)} = v.c{n}::jsonb")
        else:
            arrays.append(f"%s::{column.db_type(connection)}[]")
            params.append([column.get_db_prep_save(v, connection) for v in values])
            sets.append(f"{quote(column.column)} = v.c{n}")
    names = ", ".join(["id", *(f"c{n}" for n in range(len(columns)))])
    pk = quote(meta.pk.column)
    sql = (
        f"UPDATE {quote(meta.db_table)} AS t SET {', '.join(sets)} "  # noqa: S608 (identifiers from the model)
        f"FROM unnest({', '.join(arrays)}) AS v({names}) WHERE t.{pk} = v.id "
        # The join alone may be planned as a hash join over the whole table; the ids as a constant list make
        # it index look-ups.
        f"AND t.{pk} = ANY({arrays[0]})"
    )
    params.append(params[0])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
