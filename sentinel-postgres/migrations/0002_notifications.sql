-- Sentinel's schema, version 2: change notifications for waiting clients (src/notify.rs).
--
-- `version` counts the record's logged transitions: every statement that appends an execution
-- event for a change of the record adds one (heartbeats, which log nothing, do not). A waiting
-- client compares the version its busy claim saw with the current one to tell whether it missed
-- a change.
--
-- `watched` is set by the first client that waits on the record, and never cleared: the
-- transitions of a watched record call pg_notify, those of any other record do not. NOTIFY
-- serializes the commits of every notifying transaction of the cluster (PostgreSQL holds a global
-- lock from the notification's queueing until after the commit's WAL flush), so notifying only
-- for records someone waits on keeps the commits of the hot path concurrent.
--
-- Both are added with constant defaults: no table rewrite.
ALTER TABLE executions
    ADD COLUMN version bigint NOT NULL DEFAULT 0,
    ADD COLUMN watched boolean NOT NULL DEFAULT false;
