-- Phase 2, step 2b: when and why an integration event failed. The strategy's 48-hour watch (4.2)
-- tracks "error rates and types" and the event processing rate; the elided DDL of 020 records
-- when an event was processed (processed_at) but not when one failed, nor why, so a failure
-- rate over an interval and its types (roles/watch) could not be computed. Two nullable columns
-- without defaults on a table phase 2 has just created: catalog only, no rewrite. They go with
-- the table when phase 2 is rolled back. Today's application never writes them (it knows
-- nothing of this table); the event processor of the next version does.
ALTER TABLE integration_events
    ADD COLUMN IF NOT EXISTS failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS error_message text;
