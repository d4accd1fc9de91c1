-- pgmigrate: no-transaction
-- Phase 3, step 6, the last of the background steps (after 030, 040 and 050): VACUUM (ANALYZE)
-- the tables phase 3 filled. ANALYZE gives the planner their rows as they now are, not the
-- empty tables phase 2 created; VACUUM sets their hint bits and visibility map once, here,
-- instead of in the first reads: phase 6's checks and views, and the application's first
-- dashboard reads (the first scan of 100,000 fresh workflows took 1 s more before its first
-- row, and the progress view 2.7-4.2 s instead of 1.5 s). VACUUM takes only a SHARE UPDATE
-- EXCLUSIVE lock on tables the application does not use yet, and cannot run in a transaction:
-- hence no-transaction. client_app_overrides is left to autovacuum: its million updated rows
-- make it due anyway, and a VACUUM of it is a full read.
VACUUM (ANALYZE) orchestration_workflows;
VACUUM (ANALYZE) handover_packages;
VACUUM (ANALYZE) integration_events;
