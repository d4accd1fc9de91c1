-- Phase 2, step 2: the four new tables (the strategy elides their DDL; this is our design).
-- They are new and empty, so their indexes are built here, in the same transaction, without
-- CONCURRENTLY. The foreign keys to clients_enhanced take a brief SHARE ROW EXCLUSIVE lock on it,
-- under the runner's lock_timeout.
-- ids are uuid like the strategy's marketplace_module_id and installation_id.

CREATE TABLE IF NOT EXISTS orchestration_workflows (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_name        text NOT NULL,
    workflow_type        varchar(50) NOT NULL,
    client_id            uuid NOT NULL REFERENCES clients_enhanced (id) ON DELETE CASCADE,
    workflow_definition  jsonb NOT NULL DEFAULT '{}',
    status               varchar(50) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz
);
-- The RLS policy filters by client_id; one onboarding workflow per client is a constraint.
CREATE INDEX IF NOT EXISTS idx_ow_client ON orchestration_workflows (client_id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_ow_client_onboarding
    ON orchestration_workflows (client_id) WHERE workflow_type = 'client_onboarding';
CREATE INDEX IF NOT EXISTS idx_ow_status ON orchestration_workflows (status);

CREATE TABLE IF NOT EXISTS workflow_executions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_id    uuid NOT NULL REFERENCES orchestration_workflows (id) ON DELETE CASCADE,
    step_key       text NOT NULL,
    status         varchar(50) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    started_at     timestamptz,
    finished_at    timestamptz,
    error_message  text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_we_workflow ON workflow_executions (workflow_id, created_at);

CREATE TABLE IF NOT EXISTS handover_packages (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id              uuid NOT NULL REFERENCES clients_enhanced (id) ON DELETE CASCADE,
    workflow_id            uuid REFERENCES orchestration_workflows (id) ON DELETE SET NULL,
    package_name           text NOT NULL,
    installed_modules      jsonb NOT NULL DEFAULT '[]',
    module_configurations  jsonb NOT NULL DEFAULT '{}',
    status                 varchar(50) NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'ready', 'delivered', 'archived')),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    delivered_at           timestamptz
);
CREATE INDEX IF NOT EXISTS idx_hp_client ON handover_packages (client_id);
CREATE INDEX IF NOT EXISTS idx_hp_workflow ON handover_packages (workflow_id);

-- An event bus table: correlation_id points at the source row (an installation id for
-- module_installed); processed_at null means not yet processed (the processing-lag metric).
CREATE TABLE IF NOT EXISTS integration_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type      varchar(100) NOT NULL,
    event_source    varchar(100) NOT NULL,
    event_payload   jsonb NOT NULL DEFAULT '{}',
    correlation_id  uuid,
    status          varchar(50) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'processed', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz
);
CREATE INDEX IF NOT EXISTS idx_ie_correlation ON integration_events (correlation_id, event_type);
CREATE INDEX IF NOT EXISTS idx_ie_pending ON integration_events (created_at) WHERE processed_at IS NULL;
