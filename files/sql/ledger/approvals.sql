-- The strategy's sign-off sheet (section 8) as data: one row per recorded decision, never
-- updated. The latest decision of each role counts; a 'no-go' stops the run at the next
-- go/no-go checkpoint. Written by playbooks/approve.yml, read by every production run.
CREATE TABLE IF NOT EXISTS migration_ledger.approvals (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage        text NOT NULL CHECK (stage IN ('pre', 'post')),
    role         text NOT NULL,
    name         text NOT NULL CHECK (length(name) > 0),
    decision     text NOT NULL CHECK (decision IN ('go', 'no-go')),
    note         text,
    environment  text NOT NULL,
    recorded_by  text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX IF NOT EXISTS approvals_role_idx ON migration_ledger.approvals (stage, role, recorded_at DESC);

-- Signed sign-offs (docs/monitoring.md#signed-sign-offs): the approver's SSH signature of the
-- run's plan (armored, as ssh-keygen -Y sign writes it), the plan it was verified against when
-- recorded and its sha256. Every run verifies the signature again against its own plan; the
-- plan kept here only says what changed since. Added to ledgers created before them.
ALTER TABLE migration_ledger.approvals
    ADD COLUMN IF NOT EXISTS signature text,
    ADD COLUMN IF NOT EXISTS plan text,
    ADD COLUMN IF NOT EXISTS plan_checksum text;
