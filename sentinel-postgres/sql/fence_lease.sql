-- fence_lease: fence.sql for the lease keyspace: token $4 must be the current token of the held
-- lease ($1 namespace, $2 key) and alive at $3 (manual time in µs; NULL: the server clock). The
-- row stays locked FOR KEY SHARE until the caller's transaction ends; acquiring the lease after
-- it expires and releasing it lock FOR UPDATE and so wait, renewals do not.
--
-- Only under READ COMMITTED, as fence.sql and for the same reason (a renewal since the snapshot
-- would look expired): any other level gets the verdict 'not_read_committed', with nothing
-- locked or written.
WITH
locked AS MATERIALIZED (
    SELECT l.owner, l.token, l.lease_expires_at
    FROM {schema}.leases AS l
    WHERE l.namespace = $1 AND l.key = $2
      AND current_setting('transaction_isolation') IN ('read committed', 'read uncommitted')
    FOR KEY SHARE
),
timed AS MATERIALIZED (
    SELECT l.*, coalesce($3, {schema}.micros(clock_timestamp())) AS now_us
    FROM locked AS l
)
SELECT CASE
           WHEN i.isolation NOT IN ('read committed', 'read uncommitted')
               THEN 'not_read_committed'
           WHEN t.owner IS NULL THEN 'not_found'
           WHEN t.token <> $4 THEN 'fenced'
           WHEN NOT ({schema}.at_micros(t.now_us) < t.lease_expires_at) THEN 'expired'
           ELSE 'held'
       END AS verdict,
       t.token, i.isolation
FROM (SELECT current_setting('transaction_isolation') AS isolation) AS i
LEFT JOIN timed AS t ON true
