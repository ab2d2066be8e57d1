"""Usage events move into a table partitioned by month of ``at`` (serving/gateway/partitions.py).

First the model's own changes on the plain table (the unique key becomes (event_id, at), as a partitioned
table's unique keys must hold its partition key; a block range index for time; no separate index for the
key, which usage_key_time starts with). Then the table is rebuilt as a partitioned one with the same
columns, names and constraints, its rows copied, and the partitions of the months around now created.
Not reversible: going back would need the rows of every partition copied into one table again.
"""

import django.contrib.postgres.indexes
import django.db.models.deletion
from django.db import migrations, models


PARTITION = """
ALTER TABLE gateway_usageevent RENAME TO gateway_usageevent_plain;
CREATE TABLE gateway_usageevent (LIKE gateway_usageevent_plain INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (at);
CREATE TABLE gateway_usageevent_default PARTITION OF gateway_usageevent DEFAULT;
INSERT INTO gateway_usageevent SELECT * FROM gateway_usageevent_plain;
DROP TABLE gateway_usageevent_plain;
CREATE SEQUENCE gateway_usageevent_id_seq OWNED BY gateway_usageevent.id;
SELECT setval('gateway_usageevent_id_seq', COALESCE((SELECT max(id) FROM gateway_usageevent), 0) + 1, false);
ALTER TABLE gateway_usageevent ALTER COLUMN id SET DEFAULT nextval('gateway_usageevent_id_seq');
ALTER TABLE gateway_usageevent ADD CONSTRAINT gateway_usageevent_pkey PRIMARY KEY (id, at);
ALTER TABLE gateway_usageevent ADD CONSTRAINT usage_event_once UNIQUE (event_id, at);
ALTER TABLE gateway_usageevent ADD CONSTRAINT gateway_usageevent_api_key_id_a674c516_fk_gateway_apikey_id
    FOREIGN KEY (api_key_id) REFERENCES gateway_apikey (id) DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX usage_team_time ON gateway_usageevent (team_id, at);
CREATE INDEX usage_key_time ON gateway_usageevent (api_key_id, at);
CREATE INDEX usage_endpoint_time ON gateway_usageevent (endpoint, at);
CREATE INDEX usage_time ON gateway_usageevent USING brin (at);
"""


def create_partitions(apps, schema_editor):
    from serving.gateway import partitions

    partitions.ensure(ahead=2)


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0003_usage_event_owners'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='usageevent',
            name='usage_time',
        ),
        migrations.AlterField(
            model_name='usageevent',
            name='api_key',
            field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='usage', to='gateway.apikey'),
        ),
        migrations.AlterField(
            model_name='usageevent',
            name='event_id',
            field=models.CharField(help_text='The request id; makes inserts idempotent', max_length=40),
        ),
        migrations.AddIndex(
            model_name='usageevent',
            index=django.contrib.postgres.indexes.BrinIndex(fields=['at'], name='usage_time'),
        ),
        migrations.AddConstraint(
            model_name='usageevent',
            constraint=models.UniqueConstraint(fields=('event_id', 'at'), name='usage_event_once'),
        ),
        migrations.RunSQL(PARTITION),
        migrations.RunPython(create_partitions),
    ]
