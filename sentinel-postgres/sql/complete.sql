-- complete: records the result of an execution (DESIGN §3 "complete"), as
-- sentinel_core::execution::transition (complete).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 token,
-- $5 result (JSON text).
--
-- A current token completes an 'executing' record even after its lease expired (a current
-- token proves no other generation exists). The same completion sent again (same token, same
-- result) succeeds without a second event. Any other refusal is logged as 'completion_rejected'
-- with the result the worker reported, because an operator reconciling the key may need it.
-- Results are compared as the JSON text the client serialized.
--
-- Also run inside the caller's own transaction by PostgresStore::complete_in.
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.owner, e.token, e.result, e.watched
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
               WHEN t.token <> $4 THEN 'fenced'
               WHEN t.state = 'executing' THEN 'completed'
               WHEN t.state = 'completed' AND t.result::text = $5 THEN 'unchanged'
               ELSE 'wrong_state'
           END AS verdict
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1,
        state = 'completed',
        result = $5::json,
        updated_at = {schema}.at_micros(j.now_us)
    FROM judged AS j
    WHERE e.namespace = $1 AND e.key = $2 AND j.verdict = 'completed'
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2,
           CASE WHEN j.verdict = 'completed' THEN 'completed' ELSE 'completion_rejected' END,
           $4,
           CASE WHEN j.verdict = 'completed' THEN j.owner END,
           CASE WHEN j.verdict = 'completed' THEN 'completed' ELSE j.state END,
           {schema}.at_micros(j.now_us),
           CASE WHEN j.verdict <> 'completed'
                THEN json_build_object('reason', j.verdict, 'result', $5::json) END
    FROM judged AS j
    WHERE j.verdict IN ('completed', 'fenced', 'wrong_state')
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM judged AS w)
)
SELECT j.verdict, j.state, j.token
FROM judged AS j
