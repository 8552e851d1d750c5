-- A read-only role for API readers, and row-level security by tenant.
--
-- Grant the role to the API's login role (GRANT evalsink_reader TO api;). A reader sees the rows
-- of the tenant it names for its session:
--     SET evalsink.tenant_id = 'acme';
-- and nothing without it. evalsink itself writes as the tables' owner, which row-level
-- security does not restrict.

DO $$
BEGIN
    CREATE ROLE evalsink_reader NOLOGIN;
EXCEPTION
    -- Roles belong to the whole server: another database's migration made it already.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO evalsink_reader;
GRANT SELECT ON events, evaluations, security_audit, security_events TO evalsink_reader;

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE evaluations ENABLE ROW LEVEL SECURITY;
ALTER TABLE security_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE security_events ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_rows ON events FOR SELECT TO evalsink_reader
    USING (tenant_id = current_setting('evalsink.tenant_id', true));
CREATE POLICY tenant_rows ON evaluations FOR SELECT TO evalsink_reader
    USING (tenant_id = current_setting('evalsink.tenant_id', true));
CREATE POLICY tenant_rows ON security_audit FOR SELECT TO evalsink_reader
    USING (tenant_id = current_setting('evalsink.tenant_id', true));
CREATE POLICY tenant_rows ON security_events FOR SELECT TO evalsink_reader
    USING (tenant_id = current_setting('evalsink.tenant_id', true));
