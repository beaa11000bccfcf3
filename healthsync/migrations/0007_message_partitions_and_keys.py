"""The message store partitioned by time on PostgreSQL, and the duplicate check moved to MessageKey.

Hand-written around the generated state changes. A partitioned table can hold no unique index without its
partition key and no foreign key can point at it, so first the foreign keys to and from messages lose their
database constraints and dedupe_key loses its unique index (MessageKey takes over, filled from the stored
first copies); then, on PostgreSQL only, healthsync_message is rebuilt as a table range-partitioned by
received_at with a DEFAULT partition, one partition per range that holds existing rows, the current and the
next ones (healthsync.partitions), a primary key (id, received_at) and its own id sequence.

Existing rows are copied once, inside the migration's transaction: on a large store, plan the downtime.
SQLite keeps the plain table.
"""

from datetime import UTC, datetime

import django.db.models.deletion
from django.db import migrations, models

TABLE = "healthsync_message"
OLD = "healthsync_message_unpartitioned"
SEQUENCE = "healthsync_message_id_seq"


def _index_definitions(cursor, table):
    cursor.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s "
        "AND indexname <> %s",
        [table, f"{table}_pkey"],
    )
    return [row[0] for row in cursor.fetchall()]


def partition_messages(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from healthsync import partitions

    with schema_editor.connection.cursor() as cursor:
        if partitions.is_partitioned(cursor):
            return
        indexes = _index_definitions(cursor, TABLE)
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
        cursor.execute(
            f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (received_at)"
        )
        # After a reverse migration the old id default is a sequence the old table owns: not copied here.
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id DROP DEFAULT")
        cursor.execute(f"CREATE TABLE {partitions.DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
        cursor.execute(f"SELECT DISTINCT date_trunc('day', received_at AT TIME ZONE 'UTC') FROM {OLD}")
        days = [row[0].replace(tzinfo=UTC) for row in cursor.fetchall()]
        for day in sorted(days):
            partitions.ensure_partitions(cursor, now=day, ahead=0)
        partitions.ensure_partitions(cursor, now=datetime.now(UTC))
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")
        cursor.execute(f"DROP TABLE {OLD}")
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id, received_at)")
        for definition in indexes:
            cursor.execute(definition)
        _own_sequence(cursor, TABLE)


def _own_sequence(cursor, table):
    cursor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}")
    cursor.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY {table}.id")
    cursor.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT nextval('{SEQUENCE}')")
    cursor.execute(f"SELECT setval('{SEQUENCE}', COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)")


def unpartition_messages(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from healthsync import partitions

    with schema_editor.connection.cursor() as cursor:
        if not partitions.is_partitioned(cursor):
            return
        indexes = _index_definitions(cursor, TABLE)
        cursor.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY NONE")
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
        cursor.execute(f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")
        cursor.execute(f"DROP TABLE {OLD} CASCADE")
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)")
        for definition in indexes:
            cursor.execute(definition.replace(" ON ONLY ", " ON "))
        _own_sequence(cursor, TABLE)


class Migration(migrations.Migration):

    dependencies = [
        ('healthsync', '0006_governed_sla_code_tables'),
    ]

    operations = [
        migrations.AlterField(
            model_name='canonicalevent',
            name='message',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='events', to='healthsync.message'),
        ),
        migrations.AlterField(
            model_name='exceptionitem',
            name='message',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='healthsync.message'),
        ),
        migrations.AlterField(
            model_name='message',
            name='connector',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='messages', to='healthsync.connector'),
        ),
        migrations.AlterField(
            model_name='message',
            name='dedupe_key',
            field=models.CharField(blank=True, max_length=420, null=True),
        ),
        migrations.AlterField(
            model_name='message',
            name='duplicate_of',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='healthsync.message'),
        ),
        migrations.AlterField(
            model_name='message',
            name='replay_of',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='replays', to='healthsync.message'),
        ),
        migrations.AlterField(
            model_name='replayitem',
            name='original',
            field=models.ForeignKey(db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='healthsync.message'),
        ),
        migrations.AlterField(
            model_name='replayitem',
            name='replay',
            field=models.ForeignKey(db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='healthsync.message'),
        ),
        migrations.CreateModel(
            name='MessageKey',
            fields=[
                ('key', models.CharField(max_length=420, primary_key=True, serialize=False)),
                ('message', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='healthsync.message')),
            ],
        ),
        migrations.RunSQL(
            "INSERT INTO healthsync_messagekey (key, message_id) "
            "SELECT dedupe_key, id FROM healthsync_message WHERE dedupe_key IS NOT NULL",
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.RunPython(partition_messages, unpartition_messages),
    ]
