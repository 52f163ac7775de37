-- reconcile: an operator fences out the worker of an uncertain execution under a new token
-- (DESIGN §3 "reconcile"), as sentinel_core::execution::transition (reconcile).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 operator (owner).
--
-- Refused while the execution is alive. The new token is max(last + 1, now in µs). The row is
-- locked FOR UPDATE, so a worker's transaction holding a fence on it commits first.
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.token, e.lease_expires_at, e.watched
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
               WHEN t.state <> 'executing' THEN 'wrong_state'
               WHEN {schema}.at_micros(t.now_us) < t.lease_expires_at THEN 'still_alive'
               ELSE 'reconciling'
           END AS verdict,
           greatest(t.token + 1, t.now_us) AS next_token
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1,
        state = 'reconciling',
        owner = $4,
        token = j.next_token,
        request_id = NULL,
        updated_at = {schema}.at_micros(j.now_us)
    FROM judged AS j
    WHERE e.namespace = $1 AND e.key = $2 AND j.verdict = 'reconciling'
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2, 'reconciling', j.next_token, $4, 'reconciling',
           {schema}.at_micros(j.now_us), NULL
    FROM judged AS j
    WHERE j.verdict = 'reconciling'
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM judged AS w)
)
SELECT j.verdict, j.state,
       CASE WHEN j.verdict = 'reconciling' THEN j.next_token ELSE j.token END AS token
FROM judged AS j
