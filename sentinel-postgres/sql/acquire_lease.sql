-- acquire_lease: takes the lease ($1 namespace, $2 key) if it is free or expired (DESIGN §3,
-- lease keyspace), as sentinel_core::lease::transition (acquire).
--
-- $3 manual time in µs (NULL: the server clock), $4 owner, $5 ttl µs, $6 hard ttl µs,
-- $7 request id (16 bytes).
--
-- As claim.sql: a live lease is answered from the snapshot, without a lock (held, or our own
-- grant handed back to a retried call); a free or expired one is taken by an upsert whose
-- ON CONFLICT branch locks the row FOR UPDATE (so a transaction holding a fence on it commits
-- first) and judges it again at its latest version; 'retry' means a concurrent acquire won in
-- between and nothing was written.
WITH
seen AS MATERIALIZED (
    SELECT l.owner, l.token, l.request_id, l.lease_expires_at, l.hard_expires_at,
           coalesce($3, {schema}.micros(clock_timestamp())) AS now_us
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN {schema}.leases AS l ON l.namespace = $1 AND l.key = $2
),
decided AS MATERIALIZED (
    SELECT s.*,
           s.owner IS NULL OR NOT ({schema}.at_micros(s.now_us) < s.lease_expires_at) AS wins
    FROM seen AS s
),
acquired AS (
    INSERT INTO {schema}.leases AS l
        (namespace, key, token, owner, request_id, lease_expires_at, hard_expires_at,
         ttl_us, hard_ttl_us, acquired_at)
    SELECT $1, $2, greatest(1, d.now_us), $4, $7,
           {schema}.at_micros(least(d.now_us + $5, 253402300799999999)),
           {schema}.at_micros(least(d.now_us + $6, 253402300799999999)),
           $5, $6, {schema}.at_micros(d.now_us)
    FROM decided AS d
    WHERE d.wins
    ON CONFLICT (namespace, key) DO UPDATE
    SET (key, owner, token, request_id, lease_expires_at, hard_expires_at, ttl_us, hard_ttl_us,
         acquired_at) =
        (SELECT l.key, excluded.owner,
                greatest(l.token + 1, t.now_us), -- FencingToken::next
                excluded.request_id,
                {schema}.at_micros(least(t.now_us + $5, 253402300799999999)),
                {schema}.at_micros(least(t.now_us + $6, 253402300799999999)),
                excluded.ttl_us, excluded.hard_ttl_us, {schema}.at_micros(t.now_us)
         FROM (SELECT coalesce($3, {schema}.micros(clock_timestamp())) AS now_us) AS t)
    WHERE l.owner IS NULL
       OR NOT ({schema}.at_micros(coalesce($3, {schema}.micros(clock_timestamp())))
               < l.lease_expires_at)
    RETURNING l.owner, l.token, l.lease_expires_at, l.hard_expires_at, l.acquired_at
),
logged AS (
    INSERT INTO {schema}.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'lease', $1, $2, 'lease_acquired', a.token, a.owner, NULL, a.acquired_at, NULL
    FROM acquired AS a
)
SELECT CASE
           WHEN a.token IS NOT NULL THEN 'acquired'
           WHEN d.wins THEN 'retry'
           WHEN d.request_id = $7 THEN 'acquired'
           ELSE 'held'
       END AS outcome,
       coalesce(a.owner, d.owner) AS owner,
       coalesce(a.token, d.token) AS token,
       {schema}.micros(coalesce(a.lease_expires_at, d.lease_expires_at)) AS lease_expires_us,
       {schema}.micros(coalesce(a.hard_expires_at, d.hard_expires_at)) AS hard_expires_us
FROM decided AS d
LEFT JOIN acquired AS a ON true
