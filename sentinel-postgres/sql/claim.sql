-- claim: the "claim" rows of DESIGN §3, as sentinel_core::execution::transition (claim, grant).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 owner, $5 ttl µs,
-- $6 hard ttl µs, $7 start (true: straight to 'executing'), $8 request id (16 bytes),
-- $9 fingerprint (NULL: none).
--
-- The record is first judged as this statement's snapshot shows it. An answer that changes
-- nothing (completed, busy, uncertain, reconciling, a fingerprint mismatch, our own live claim
-- handed back to a retried call) comes from the snapshot: no lock, no write. Only a grant writes:
-- an upsert whose ON CONFLICT branch locks the row and judges it again, at its latest version
-- and at a time read after the lock, so two claims can never both win. If the latest version
-- refuses the grant (a concurrent claim won between the snapshot and the lock), nothing is
-- written and the outcome is 'retry': the caller sends the statement again and sees that claim.
--
-- The ON CONFLICT branch lists `key` among the columns it sets (to its own value): that makes it
-- lock the row FOR UPDATE, which waits for a transaction holding a fence (FOR KEY SHARE).
WITH
seen AS MATERIALIZED (
    SELECT e.state, e.owner, e.token, e.request_id, e.lease_expires_at, e.hard_expires_at,
           e.result, e.fingerprint,
           coalesce($3, {schema}.micros(clock_timestamp())) AS now_us
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN {schema}.executions AS e ON e.namespace = $1 AND e.key = $2
),
judged AS MATERIALIZED (
    SELECT s.*,
           {schema}.at_micros(s.now_us) < s.lease_expires_at AS alive,
           coalesce(s.request_id = $8, false) AS own,
           s.fingerprint IS NOT DISTINCT FROM $9 AS fingerprint_matches
    FROM seen AS s
),
decided AS MATERIALIZED (
    SELECT j.*,
           -- No record (never claimed, or purged), or one that may be claimed again.
           j.state IS NULL
           OR (j.fingerprint_matches
               AND NOT j.alive
               AND (j.state = 'claimed' OR (j.state = 'executing' AND j.own))) AS wins
    FROM judged AS j
),
claimed AS (
    INSERT INTO {schema}.executions AS e
        (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
         ttl_us, hard_ttl_us, result, fingerprint, created_at, updated_at)
    SELECT $1, $2, greatest(1, d.now_us), CASE WHEN $7 THEN 'executing' ELSE 'claimed' END,
           $4, $8,
           {schema}.at_micros(least(d.now_us + $5, 253402300799999999)),
           {schema}.at_micros(least(d.now_us + $6, 253402300799999999)),
           $5, $6, NULL, $9, {schema}.at_micros(d.now_us), {schema}.at_micros(d.now_us)
    FROM decided AS d
    WHERE d.wins
    ON CONFLICT (namespace, key) DO UPDATE
    SET (key, state, owner, token, request_id, lease_expires_at, hard_expires_at, ttl_us,
         hard_ttl_us, result, fingerprint, created_at, updated_at) =
        (SELECT e.key, excluded.state, excluded.owner,
                greatest(e.token + 1, t.now_us), -- FencingToken::next
                excluded.request_id,
                {schema}.at_micros(least(t.now_us + $5, 253402300799999999)),
                {schema}.at_micros(least(t.now_us + $6, 253402300799999999)),
                excluded.ttl_us, excluded.hard_ttl_us, NULL::json, excluded.fingerprint,
                CASE WHEN e.state IS NULL THEN {schema}.at_micros(t.now_us)
                     ELSE e.created_at END,
                {schema}.at_micros(t.now_us)
         FROM (SELECT coalesce($3, {schema}.micros(clock_timestamp())) AS now_us) AS t)
    WHERE e.state IS NULL
       OR (e.fingerprint IS NOT DISTINCT FROM $9
           AND NOT ({schema}.at_micros(coalesce($3, {schema}.micros(clock_timestamp())))
                    < e.lease_expires_at)
           AND (e.state = 'claimed' OR (e.state = 'executing' AND e.request_id = $8)))
    RETURNING e.state, e.owner, e.token, e.lease_expires_at, e.hard_expires_at, e.updated_at
),
logged AS (
    INSERT INTO {schema}.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', $1, $2, 'claimed', c.token, c.owner, c.state, c.updated_at, NULL
    FROM claimed AS c
)
SELECT CASE
           WHEN c.token IS NOT NULL THEN 'acquired'
           WHEN d.wins THEN 'retry'
           WHEN NOT d.fingerprint_matches THEN 'fingerprint_mismatch'
           WHEN d.state IN ('claimed', 'executing') AND d.own AND d.alive THEN 'acquired'
           WHEN d.state IN ('claimed', 'executing') AND d.alive THEN 'busy'
           WHEN d.state IN ('claimed', 'executing') THEN 'uncertain'
           WHEN d.state = 'completed' THEN 'completed'
           ELSE 'reconciling'
       END AS outcome,
       coalesce(c.state, d.state) AS state,
       coalesce(c.owner, d.owner) AS owner,
       coalesce(c.token, d.token) AS token,
       {schema}.micros(coalesce(c.lease_expires_at, d.lease_expires_at)) AS lease_expires_us,
       {schema}.micros(coalesce(c.hard_expires_at, d.hard_expires_at)) AS hard_expires_us,
       CASE WHEN c.token IS NULL THEN d.result::text END AS result,
       d.fingerprint
FROM decided AS d
LEFT JOIN claimed AS c ON true
