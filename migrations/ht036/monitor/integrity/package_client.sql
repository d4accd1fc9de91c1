-- Handover packages whose client does not exist.
SELECT count(*) FROM handover_packages h
 WHERE NOT EXISTS (SELECT 1 FROM clients_enhanced c WHERE c.id = h.client_id)
