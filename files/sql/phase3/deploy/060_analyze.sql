-- Phase 3, step 6, the last of the background steps (after 030, 040 and 050): fresh planner
-- statistics for the tables phase 3 filled (orchestration_workflows had its own in 040), so
-- phase 6's checks and views, and the application's first reads, are planned on the rows as
-- they now are, not on the empty tables phase 2 created. ANALYZE reads a sample and takes only
-- a SHARE UPDATE EXCLUSIVE lock. client_app_overrides is left to autovacuum: its million
-- updated rows make it due anyway, and its sample costs a full read.
ANALYZE handover_packages;
ANALYZE integration_events;
