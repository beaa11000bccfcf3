"""Insert a row unless its unique key is taken, in one round trip and without a savepoint.

The hot path (events, deliveries, workflow runs) asks "create this unless it exists" for every message. Django's
way (a savepoint, an INSERT, an IntegrityError, a rollback to the savepoint, a SELECT) costs three to five round
trips; on PostgreSQL `INSERT … ON CONFLICT DO NOTHING RETURNING` answers in one, and a conflicting row simply is
not inserted, so the surrounding transaction stays usable. post_save is sent for an inserted row as `save()`
would (apps listen: the event-stream publisher, the KPI rollups); pre_save is not.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Model
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
    post_save.send(
        sender=obj.__class__,
        instance=obj,
        created=True,
        update_fields=None,
        raw=False,
        using=connection.alias,
    )
    return True
