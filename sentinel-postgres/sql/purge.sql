-- purge: removes up to $4 completed records of namespace $1 last changed at least $3 µs ago,
-- oldest first (DESIGN §3 "purge"), as sentinel_core::execution::transition (purge) applied to
-- each. $2 is the manual time in µs (NULL: the server clock).
--
-- Each purged row becomes a tombstone that keeps its last token, so tokens keep increasing; its
-- earlier history is deleted and a 'purged' event is logged. Rows are locked FOR UPDATE and
-- checked again at their latest version.
WITH
clock AS MATERIALIZED (
    SELECT coalesce($2, {schema}.micros(clock_timestamp())) AS now_us
),
doomed AS MATERIALIZED (
    SELECT e.namespace, e.key, e.token, e.watched
    FROM {schema}.executions AS e
    WHERE e.namespace = $1
      AND e.state = 'completed'
      AND e.updated_at <= (SELECT {schema}.at_micros(greatest(c.now_us - $3, 0)) FROM clock AS c)
    ORDER BY e.updated_at, e.key
    LIMIT $4
    FOR UPDATE
),
tombstoned AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1, state = NULL, owner = NULL, request_id = NULL,
        lease_expires_at = NULL, hard_expires_at = NULL, ttl_us = NULL, hard_ttl_us = NULL, result = NULL,
        fingerprint = NULL, created_at = NULL, updated_at = NULL
    FROM doomed AS d
    WHERE e.namespace = d.namespace AND e.key = d.key
),
forgotten AS (
    DELETE FROM {schema}.events AS ev
    USING doomed AS d
    WHERE ev.keyspace = 'execution' AND ev.namespace = d.namespace AND ev.key = d.key
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', d.namespace, d.key, 'purged', d.token, NULL, NULL,
           {schema}.at_micros(c.now_us), NULL
    FROM doomed AS d
    CROSS JOIN clock AS c
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM doomed AS w
               WHERE w.namespace = ev.namespace AND w.key = ev.key)
)
SELECT count(*) AS purged
FROM doomed
