-- start: a claimed execution crosses into 'executing' (DESIGN §3 "start"), as
-- sentinel_core::execution::transition (start).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 token.
--
-- The row is locked FOR NO KEY UPDATE: the same generation moves on, so a transaction holding
-- a fence (FOR KEY SHARE) does not block it. The time is read after the lock is taken.
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.owner, e.token, e.lease_expires_at, e.hard_expires_at, e.ttl_us, e.watched
    FROM {schema}.executions AS e
    WHERE e.namespace = $1 AND e.key = $2
    FOR NO KEY UPDATE
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
               WHEN t.state NOT IN ('claimed', 'executing') THEN 'wrong_state'
               WHEN NOT ({schema}.at_micros(t.now_us) < t.lease_expires_at) THEN 'expired'
               WHEN t.state = 'executing' THEN 'unchanged'
               ELSE 'started'
           END AS verdict,
           -- renewed_expiry: min(now + ttl, hard), never below the current expiry.
           {schema}.at_micros(greatest({schema}.micros(t.lease_expires_at),
                                       least(t.now_us + t.ttl_us,
                                             {schema}.micros(t.hard_expires_at)))) AS renewed
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.executions AS e
    SET version = e.version + 1,
        state = 'executing',
        lease_expires_at = j.renewed,
        updated_at = {schema}.at_micros(j.now_us)
    FROM judged AS j
    WHERE e.namespace = $1 AND e.key = $2 AND j.verdict = 'started'
),
logged AS (
    INSERT INTO {schema}.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2, 'started', j.token, j.owner, 'executing',
           {schema}.at_micros(j.now_us), NULL
    FROM judged AS j
    WHERE j.verdict = 'started'
    -- Wakes the record's waiters, if it has some, when the event commits (src/sql.rs, NOTIFY).
    RETURNING (SELECT {notify}
               FROM judged AS w)
)
SELECT j.verdict, j.state, j.token,
       {schema}.micros(CASE WHEN j.verdict = 'started' THEN j.renewed
                            ELSE j.lease_expires_at END) AS lease_expires_us
FROM judged AS j
