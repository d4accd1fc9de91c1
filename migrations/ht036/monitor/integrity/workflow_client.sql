-- Workflows whose client does not exist.
SELECT count(*) FROM orchestration_workflows w
 WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced c WHERE c.id = w.client_id)
