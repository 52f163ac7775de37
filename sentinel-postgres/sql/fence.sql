-- fence: run inside the caller's transaction. Checks that token $4 is the current token of the
-- execution ($1 namespace, $2 key), that it is 'executing' and that its lease is alive at
-- $3 (manual time in µs; NULL: the server clock), and locks the row FOR KEY SHARE until the
-- transaction ends.
--
-- Every transition that could hand the key to another generation (claim, reconcile, abort,
-- force_complete, reset, purge) locks the row FOR UPDATE, which conflicts with FOR KEY SHARE:
-- it waits until the fenced transaction commits or rolls back, so a write committed under the
-- fence can never land after a takeover. Heartbeats, start and a complete that applies (only the
-- fenced token can complete; completing hands the key to nobody) lock FOR NO KEY UPDATE, which
-- does not conflict: the holder keeps renewing meanwhile.
--
-- Only under READ COMMITTED (PostgreSQL runs READ UNCOMMITTED as READ COMMITTED), where the
-- statement judges the latest committed version of the row. Under REPEATABLE READ or
-- SERIALIZABLE it would judge the version of the transaction's snapshot, which the heartbeats
-- it lets through keep replacing: a lease renewed since then looks expired, a start since then
-- looks claimed, and complete_in later fails to serialize. Such a transaction gets the verdict
-- 'not_read_committed' (with its level in `isolation`): the row is not locked, nothing else is
-- read and nothing is written. The level is checked in this statement, so the check costs no
-- round trip.
WITH
locked AS MATERIALIZED (
    SELECT e.state, e.token, e.lease_expires_at
    FROM {schema}.executions AS e
    WHERE e.namespace = $1 AND e.key = $2
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
           WHEN t.state IS NULL THEN 'not_found'
           WHEN t.token <> $4 THEN 'fenced'
           WHEN t.state <> 'executing' THEN 'wrong_state'
           WHEN NOT ({schema}.at_micros(t.now_us) < t.lease_expires_at) THEN 'expired'
           ELSE 'held'
       END AS verdict,
       t.state, t.token, i.isolation
FROM (SELECT current_setting('transaction_isolation') AS isolation) AS i
LEFT JOIN timed AS t ON true
