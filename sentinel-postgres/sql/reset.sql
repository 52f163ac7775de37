-- reset_to_claimed: an operator returns a reconciling execution to 'claimed' with its lease
-- ended, so the next once() runs it again (DESIGN §3 "reset_to_claimed"), as
-- sentinel_core::execution::transition (reset).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 operator (owner).
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.token, e.watched
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
               WHEN t.state <> 'reconciling' THEN 'wrong_state'
               ELSE 'reset'
           END AS verdict
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1,
        state = 'claimed',
        owner = $4,
        lease_expires_at = least(e.lease_expires_at, {schema}.at_micros(j.now_us)),
        updated_at = {schema}.at_micros(j.now_us)
    FROM judged AS j
    WHERE e.namespace = $1 AND e.key = $2 AND j.verdict = 'reset'
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2, 'reset', j.token, $4, 'claimed',
           {schema}.at_micros(j.now_us), NULL
    FROM judged AS j
    WHERE j.verdict = 'reset'
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM judged AS w)
)
SELECT j.verdict, j.state, j.token
FROM judged AS j
