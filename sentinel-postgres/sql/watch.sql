-- watch: marks an execution record as waited on, so that its transitions notify from now on, and
-- returns its version as of after every transition that did not notify (src/notify.rs).
--
-- $1 namespace, $2 key, $3 how long to wait for the record's row lock, in ms, as text (NULL: the
-- session's lock_timeout). No row: there is no record.
--
-- A record already watched in this statement's snapshot is only read: every transition that did
-- not notify locked the row before the commit that set `watched`, so it committed before it, and
-- this snapshot holds its result. Otherwise the row is updated: the update waits for a
-- transition holding the row and then sees its latest version (never for a fence, which holds
-- FOR KEY SHARE), and every transition that locks the row after this commit notifies.
--
-- A transition may hold the row in a transaction that stays open (a caller's complete_in): the
-- update waits no longer than $3 (lock_timeout, set for this statement's own transaction only,
-- in `seen`, which the update reads before it locks the row), then fails with SQLSTATE 55P03 and
-- the waiter answers TimedOut, its pooled connection free again.
WITH
seen AS MATERIALIZED (
    SELECT e.version, e.watched,
           set_config('lock_timeout', coalesce($3, current_setting('lock_timeout')), true)
               AS lock_timeout
    FROM {schema}.executions AS e
    WHERE e.namespace = $1 AND e.key = $2
),
marked AS (
    UPDATE {schema}.executions AS e
    SET watched = true
    FROM seen AS s
    WHERE e.namespace = $1 AND e.key = $2 AND NOT s.watched AND s.lock_timeout IS NOT NULL
    RETURNING e.version
)
SELECT coalesce((SELECT m.version FROM marked AS m), s.version) AS version
FROM seen AS s
