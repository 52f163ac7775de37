-- heartbeat: renews any number of held executions and leases in one statement (DESIGN §3
-- "heartbeat", §4), as sentinel_core::execution::transition (heartbeat) and
-- sentinel_core::lease::transition (renew). No event is logged.
--
-- $1 keyspaces ('execution' or 'lease'), $2 namespaces, $3 keys, $4 tokens (parallel arrays,
-- one element per renewal, no record twice), $5 manual time in µs (NULL: the server clock).
--
-- Rows are locked FOR NO KEY UPDATE in key order, executions then leases, so two batches never
-- deadlock, and a transaction holding a fence (FOR KEY SHARE) does not block a renewal. The time
-- is read once, after every lock is taken. Answers come back in the order of the arrays.
WITH
wanted AS MATERIALIZED (
    SELECT w.keyspace, w.namespace, w.key, w.token, w.ord
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
         WITH ORDINALITY AS w (keyspace, namespace, key, token, ord)
),
executions_locked AS MATERIALIZED (
    SELECT e.namespace, e.key, e.state, e.token, e.lease_expires_at, e.hard_expires_at, e.ttl_us
    FROM {schema}.executions AS e
    WHERE (e.namespace, e.key) IN (SELECT w.namespace, w.key FROM wanted AS w
                                   WHERE w.keyspace = 'execution')
    ORDER BY e.namespace, e.key
    FOR NO KEY UPDATE
),
leases_locked AS MATERIALIZED (
    SELECT l.namespace, l.key, l.owner, l.token, l.lease_expires_at, l.hard_expires_at, l.ttl_us
    FROM {schema}.leases AS l
    WHERE (l.namespace, l.key) IN (SELECT w.namespace, w.key FROM wanted AS w
                                   WHERE w.keyspace = 'lease')
    ORDER BY l.namespace, l.key
    FOR NO KEY UPDATE
),
found AS MATERIALIZED (
    SELECT 'execution' AS keyspace, x.namespace, x.key, x.state IS NOT NULL AS present, x.state,
           x.token, x.lease_expires_at, x.hard_expires_at, x.ttl_us
    FROM executions_locked AS x
    UNION ALL
    SELECT 'lease', l.namespace, l.key, l.owner IS NOT NULL, NULL,
           l.token, l.lease_expires_at, l.hard_expires_at, l.ttl_us
    FROM leases_locked AS l
),
clock AS MATERIALIZED (
    SELECT coalesce($5, {schema}.micros(clock_timestamp())) AS now_us
    FROM (SELECT count(*) FROM found) AS settled
),
judged AS MATERIALIZED (
    SELECT w.ord, w.keyspace, w.namespace, w.key, f.state, f.token, f.lease_expires_at,
           CASE
               WHEN f.present IS NOT TRUE THEN 'not_found'
               WHEN f.token <> w.token THEN 'fenced'
               WHEN w.keyspace = 'execution' AND f.state NOT IN ('claimed', 'executing')
                   THEN 'wrong_state'
               WHEN NOT ({schema}.at_micros(c.now_us) < f.lease_expires_at) THEN 'expired'
               ELSE 'renewed'
           END AS verdict,
           -- renewed_expiry: min(now + ttl, hard), never below the current expiry.
           {schema}.at_micros(greatest({schema}.micros(f.lease_expires_at),
                                       least(c.now_us + f.ttl_us,
                                             {schema}.micros(f.hard_expires_at)))) AS renewed
    FROM wanted AS w
    CROSS JOIN clock AS c
    LEFT JOIN found AS f
           ON f.keyspace = w.keyspace AND f.namespace = w.namespace AND f.key = w.key
),
renewed_executions AS (
    UPDATE {schema}.executions AS e
    SET lease_expires_at = j.renewed
    FROM judged AS j
    WHERE j.keyspace = 'execution' AND j.verdict = 'renewed' AND j.renewed <> j.lease_expires_at
      AND e.namespace = j.namespace AND e.key = j.key
),
renewed_leases AS (
    UPDATE {schema}.leases AS l
    SET lease_expires_at = j.renewed
    FROM judged AS j
    WHERE j.keyspace = 'lease' AND j.verdict = 'renewed' AND j.renewed <> j.lease_expires_at
      AND l.namespace = j.namespace AND l.key = j.key
)
SELECT j.ord, j.verdict, j.state, j.token,
       {schema}.micros(CASE WHEN j.verdict = 'renewed' THEN j.renewed
                            ELSE j.lease_expires_at END) AS lease_expires_us
FROM judged AS j
ORDER BY j.ord
