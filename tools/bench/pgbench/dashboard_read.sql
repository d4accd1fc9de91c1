-- A second stream, once phase 5 has made the views: a client's row of the dashboard and its
-- modules (run as the table owner, which the views let see every client).
\set cid random(1, :scale)
SELECT * FROM unified_client_dashboard WHERE client_id = md5('client-' || :cid)::uuid;
SELECT * FROM module_integration_view WHERE client_id = md5('client-' || :cid)::uuid;
