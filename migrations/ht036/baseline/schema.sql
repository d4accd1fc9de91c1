-- The pre-migration schema the strategy assumes (agency toolkit before HT-036).
-- The migration relies only on the columns the strategy names: ids, name, created_at, app_name,
-- client_id, enabled, updated_at, module_id, tenant_id, installed_at, status. The other columns
-- stand for what a real database carries and must survive the migration untouched.
-- Loaded into the sandbox and the test clusters; never run against a real database.

CREATE TABLE clients_enhanced (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    email       text,
    plan        text NOT NULL DEFAULT 'standard',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Module names are not unique: the marketplace has listed the same name twice.
CREATE TABLE marketplace_modules (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    version     text NOT NULL DEFAULT '1.0.0',
    publisher   text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- tenant_id is a client id, without a foreign key: installations of deleted clients remain.
CREATE TABLE module_installations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    module_id     uuid NOT NULL REFERENCES marketplace_modules (id),
    tenant_id     uuid NOT NULL,
    installed_at  timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL DEFAULT 'installed'
);
CREATE INDEX module_installations_tenant_idx ON module_installations (tenant_id, module_id);

-- client_id has no foreign key either: overrides of deleted clients remain (the orphan report).
CREATE TABLE client_app_overrides (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id   uuid NOT NULL,
    app_name    text NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    settings    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX client_app_overrides_client_idx ON client_app_overrides (client_id);

CREATE TABLE client_deployments (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_id    uuid NOT NULL REFERENCES clients_enhanced (id) ON DELETE CASCADE,
    environment  text NOT NULL DEFAULT 'production',
    status       text NOT NULL,
    deployed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX client_deployments_client_idx ON client_deployments (client_id);
