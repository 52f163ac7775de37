-- watch: marks an execution record as waited on, so that its transitions notify from now on, and
-- returns its version as of after every transition that did not notify (src/notify.rs).
--
-- $1 namespace, $2 key. No row: there is no record.
--
-- A record already watched in this statement's snapshot is only read: every transition that did
-- not notify locked the row before the commit that set `watched`, so it committed before it, and
-- this snapshot holds its result. Otherwise the row is updated: the update waits for a
-- transition holding the row and then sees its latest version (never for a fence, which holds
-- FOR KEY SHARE), and every transition that locks the row after this commit notifies.
WITH
seen AS MATERIALIZED (
    SELECT e.version, e.watched
    FROM {schema}.executions AS e
    WHERE e.namespace = $1 AND e.key = $2
),
marked AS (
    UPDATE {schema}.executions AS e
    SET watched = true
    FROM seen AS s
    WHERE e.namespace = $1 AND e.key = $2 AND NOT s.watched
    RETURNING e.version
)
SELECT coalesce((SELECT m.version FROM marked AS m), s.version) AS version
FROM seen AS s
