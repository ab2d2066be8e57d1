# A statement keeps the cost center it was written under (its hash covers it: a department renamed since
# must not change it), and the number of lines it was written with: PostgreSQL refuses any other line, so a
# closed statement cannot gain one (0003 refused only changing or removing lines).
#
# The statements already written take their department's cost center now (the one their hash was made
# with, since nothing stored another) and the count of their lines. 0003's trigger refuses any UPDATE of
# a statement, so it is disabled around the backfill, inside this migration's transaction: no other
# session ever sees the table without it. The foreign keys' checks the UPDATE queued (deferred to the
# commit) run first: PostgreSQL alters no table with trigger events pending.

from django.db import migrations, models

BACKFILL = """
ALTER TABLE billing_statement DISABLE TRIGGER billing_statement_immutable;
UPDATE billing_statement s SET cost_center = d.cost_center
    FROM accounts_department d WHERE d.id = s.department_id;
UPDATE billing_statement s
    SET line_count = (SELECT count(*) FROM billing_statementline l WHERE l.statement_id = s.id);
SET CONSTRAINTS ALL IMMEDIATE;
ALTER TABLE billing_statement ENABLE TRIGGER billing_statement_immutable;
SET CONSTRAINTS ALL DEFERRED;
"""

# A line is accepted only at a position its statement was written with and not taken yet: closing (and
# re-issuing) inserts the statement with its count, then exactly that many lines, in one transaction.
INSERT_GUARD = """
CREATE OR REPLACE FUNCTION billing_statement_line_insert_guard() RETURNS trigger AS $$
BEGIN
    IF NEW.position BETWEEN 1 AND (SELECT line_count FROM billing_statement WHERE id = NEW.statement_id)
       AND NOT EXISTS (SELECT 1 FROM billing_statementline
                       WHERE statement_id = NEW.statement_id AND position = NEW.position) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'statement lines are immutable (INSERT of a line the statement was not written with refused)';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER billing_statement_line_no_insert BEFORE INSERT ON billing_statementline
    FOR EACH ROW EXECUTE FUNCTION billing_statement_line_insert_guard();
"""

DROP_INSERT_GUARD = """
DROP TRIGGER IF EXISTS billing_statement_line_no_insert ON billing_statementline;
DROP FUNCTION IF EXISTS billing_statement_line_insert_guard();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("billing", "0008_token_days_day_index_dropped"),
    ]

    operations = [
        migrations.AddField(
            model_name="statement",
            name="cost_center",
            field=models.CharField(
                default="", help_text="The department's cost center when written", max_length=32
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="statement",
            name="line_count",
            field=models.PositiveIntegerField(
                default=0, help_text="The lines it was written with: PostgreSQL refuses any other line"
            ),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.RunSQL(INSERT_GUARD, DROP_INSERT_GUARD),
    ]
