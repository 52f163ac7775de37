-- force_complete: an operator completes a reconciling execution with a known result (DESIGN §3
-- "force_complete"), as sentinel_core::execution::transition (force_complete).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 operator (owner),
-- $5 result (JSON text).
--
-- The same force_complete sent again (record completed with the same result) succeeds without a
-- second event.
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.token, e.result, e.watched
    FROM {schema}.executions AS e
    WHERE e.namespace = $1 AND e.key = $2
    FOR UPDATE
),
timed AS MATERIALIZED (
    SELECT l.*, coalesce($3, {schema}.micros(clock_timestamp())) AS now_us
    FROM locked AS l
),
judged AS MATERIALIZED (
    SELECT t.*,
           CASE
               WHEN t.state IS NULL THEN 'not_found'
               WHEN t.state = 'reconciling' THEN 'force_completed'
               WHEN t.state = 'completed' AND t.result::text = $5 THEN 'unchanged'
               ELSE 'wrong_state'
           END AS verdict
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1,
        state = 'completed',
        owner = $4,
        result = $5::json,
        updated_at = {schema}.at_micros(j.now_us)
    FROM judged AS j
    WHERE e.namespace = $1 AND e.key = $2 AND j.verdict = 'force_completed'
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2, 'force_completed', j.token, $4, 'completed',
           {schema}.at_micros(j.now_us), NULL
    FROM judged AS j
    WHERE j.verdict = 'force_completed'
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM judged AS w)
)
SELECT j.verdict, j.state, j.token
FROM judged AS j
