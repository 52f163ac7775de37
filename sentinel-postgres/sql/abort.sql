-- abort: the worker gives up its execution (DESIGN §3 "abort"), as
-- sentinel_core::execution::transition (abort).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 token,
-- $5 disposition ('not_applied' or 'uncertain').
--
-- not_applied: 'claimed' or 'executing' -> 'claimed' with the lease ended now (claimable again).
-- uncertain: 'executing' stays 'executing' with the lease ended now (uncertain to observers).
-- An abort that would change nothing (already in the target state and expired) is not logged.
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.owner, e.token, e.lease_expires_at, e.watched
    FROM {schema}.executions AS e
    WHERE e.namespace = $1 AND e.key = $2
    FOR UPDATE
),
timed AS MATERIALIZED (
    SELECT l.*, coalesce($3, {schema}.micros(clock_timestamp())) AS now_us,
           CASE WHEN $5 = 'not_applied' THEN 'claimed' ELSE 'executing' END AS target
    FROM locked AS l
),
judged AS MATERIALIZED (
    SELECT t.*,
           CASE
               WHEN t.state IS NULL THEN 'not_found'
               WHEN t.token <> $4 THEN 'fenced'
               WHEN NOT (CASE WHEN $5 = 'not_applied' THEN t.state IN ('claimed', 'executing')
                              ELSE t.state = 'executing' END) THEN 'wrong_state'
               WHEN t.state = t.target
                    AND NOT ({schema}.at_micros(t.now_us) < t.lease_expires_at) THEN 'unchanged'
               ELSE 'aborted'
           END AS verdict
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1,
        state = j.target,
        lease_expires_at = least(e.lease_expires_at, {schema}.at_micros(j.now_us)),
        updated_at = {schema}.at_micros(j.now_us)
    FROM judged AS j
    WHERE e.namespace = $1 AND e.key = $2 AND j.verdict = 'aborted'
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2, 'aborted', j.token, j.owner, j.target,
           {schema}.at_micros(j.now_us), json_build_object('disposition', $5::text)
    FROM judged AS j
    WHERE j.verdict = 'aborted'
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM judged AS w)
)
SELECT j.verdict, j.state, j.token
FROM judged AS j
