"""Closed statements and their lines cannot be changed or removed, even by a direct SQL statement of the
application role: the only change PostgreSQL lets through is marking a statement superseded (a re-issue)."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION billing_statement_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = 'closed' AND NEW.status = 'superseded'
       AND (to_jsonb(NEW) - 'status') = (to_jsonb(OLD) - 'status') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'billing statements are immutable (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER billing_statement_immutable BEFORE UPDATE OR DELETE ON billing_statement
    FOR EACH ROW EXECUTE FUNCTION billing_statement_guard();
CREATE TRIGGER billing_statement_no_truncate BEFORE TRUNCATE ON billing_statement
    FOR EACH STATEMENT EXECUTE FUNCTION billing_statement_guard();

CREATE OR REPLACE FUNCTION billing_statement_line_guard() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'statement lines are immutable (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER billing_statement_line_immutable BEFORE UPDATE OR DELETE ON billing_statementline
    FOR EACH ROW EXECUTE FUNCTION billing_statement_line_guard();
CREATE TRIGGER billing_statement_line_no_truncate BEFORE TRUNCATE ON billing_statementline
    FOR EACH STATEMENT EXECUTE FUNCTION billing_statement_line_guard();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS billing_statement_line_no_truncate ON billing_statementline;
DROP TRIGGER IF EXISTS billing_statement_line_immutable ON billing_statementline;
DROP FUNCTION IF EXISTS billing_statement_line_guard();
DROP TRIGGER IF EXISTS billing_statement_no_truncate ON billing_statement;
DROP TRIGGER IF EXISTS billing_statement_immutable ON billing_statement;
DROP FUNCTION IF EXISTS billing_statement_guard();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_ledger")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
