"""Rules PostgreSQL enforces whatever the application does.

- A finalized invoice refuses every change except to its payment fields, and refuses
  deletion; its lines refuse insertion, change and deletion. A credit note refuses every
  change except to its refund fields, and deletion.
- Journal entries and lines are append-only (UPDATE and DELETE refused).
- Every journal entry balances to zero per currency and has lines: deferred constraint
  triggers check it at commit (``billing.ledger`` also checks at once with SET CONSTRAINTS).

Violations raise SQLSTATE class 23 (integrity), which Django surfaces as IntegrityError.
"""

from django.db import migrations

INVOICE_PAYMENT_FIELDS = (
    "payment_status",
    "amount_paid_minor",
    "amount_credited_minor",
    "amount_refunded_minor",
    "paid_at",
    "payment_attempt_count",
    "next_payment_attempt_at",
    "dunning_exhausted_at",
    "last_payment_error",
    "updated_at",
)
CREDIT_NOTE_REFUND_FIELDS = (
    "refund_status",
    "refund_amount_minor",
    "stripe_refund_id",
    "refunded_at",
)


def _array(names: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(f"'{name}'" for name in names) + "]::text[]"


FORWARD = f"""
CREATE FUNCTION billing_invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.status = 'finalized' THEN
            RAISE EXCEPTION 'invoice % is finalized: it cannot be deleted', OLD.number
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.status = 'finalized'
       AND (to_jsonb(NEW) - {_array(INVOICE_PAYMENT_FIELDS)})
           IS DISTINCT FROM (to_jsonb(OLD) - {_array(INVOICE_PAYMENT_FIELDS)}) THEN
        RAISE EXCEPTION 'invoice % is finalized: only its payment fields may change', OLD.number
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_invoice_immutable
    BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_immutable();

CREATE FUNCTION billing_invoiceline_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice_ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        invoice_ids := ARRAY[NEW.invoice_id];
    ELSIF TG_OP = 'UPDATE' THEN
        invoice_ids := ARRAY[OLD.invoice_id, NEW.invoice_id];
    ELSE
        invoice_ids := ARRAY[OLD.invoice_id];
    END IF;
    IF EXISTS (SELECT 1 FROM billing_invoice
               WHERE id = ANY(invoice_ids) AND status = 'finalized') THEN
        RAISE EXCEPTION 'lines of a finalized invoice cannot be added, changed or deleted'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_invoiceline_immutable
    BEFORE INSERT OR UPDATE OR DELETE ON billing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_immutable();

CREATE FUNCTION billing_creditnote_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'credit note % cannot be deleted', OLD.number
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (to_jsonb(NEW) - {_array(CREDIT_NOTE_REFUND_FIELDS)})
       IS DISTINCT FROM (to_jsonb(OLD) - {_array(CREDIT_NOTE_REFUND_FIELDS)}) THEN
        RAISE EXCEPTION 'credit note % is issued: only its refund fields may change', OLD.number
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_creditnote_immutable
    BEFORE UPDATE OR DELETE ON billing_creditnote
    FOR EACH ROW EXECUTE FUNCTION billing_creditnote_immutable();

CREATE FUNCTION billing_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused (post a reversing entry instead)',
        TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER billing_journalentry_append_only
    BEFORE UPDATE OR DELETE ON billing_journalentry
    FOR EACH ROW EXECUTE FUNCTION billing_journal_append_only();
CREATE TRIGGER billing_journalline_append_only
    BEFORE UPDATE OR DELETE ON billing_journalline
    FOR EACH ROW EXECUTE FUNCTION billing_journal_append_only();

CREATE FUNCTION billing_journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT currency, sum(amount_minor) AS total INTO unbalanced
    FROM billing_journalline
    WHERE entry_id = NEW.entry_id
    GROUP BY currency
    HAVING sum(amount_minor) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance in %: off by %',
            NEW.entry_id, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER billing_journal_balanced
    AFTER INSERT ON billing_journalline
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION billing_journal_entry_balanced();

CREATE FUNCTION billing_journal_entry_has_lines() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM billing_journalline WHERE entry_id = NEW.id) THEN
        RAISE EXCEPTION 'journal entry % has no lines', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER billing_journal_has_lines
    AFTER INSERT ON billing_journalentry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION billing_journal_entry_has_lines();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS billing_journal_has_lines ON billing_journalentry;
DROP FUNCTION IF EXISTS billing_journal_entry_has_lines();
DROP TRIGGER IF EXISTS billing_journal_balanced ON billing_journalline;
DROP FUNCTION IF EXISTS billing_journal_entry_balanced();
DROP TRIGGER IF EXISTS billing_journalline_append_only ON billing_journalline;
DROP TRIGGER IF EXISTS billing_journalentry_append_only ON billing_journalentry;
DROP FUNCTION IF EXISTS billing_journal_append_only();
DROP TRIGGER IF EXISTS billing_creditnote_immutable ON billing_creditnote;
DROP FUNCTION IF EXISTS billing_creditnote_immutable();
DROP TRIGGER IF EXISTS billing_invoiceline_immutable ON billing_invoiceline;
DROP FUNCTION IF EXISTS billing_invoiceline_immutable();
DROP TRIGGER IF EXISTS billing_invoice_immutable ON billing_invoice;
DROP FUNCTION IF EXISTS billing_invoice_immutable();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
