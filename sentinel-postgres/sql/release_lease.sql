-- release_lease: frees a held lease (DESIGN §3, lease keyspace), as
-- sentinel_core::lease::transition (release). An expired lease may be released by its current
-- token. The row stays as a tombstone keeping the last token.
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 token.
WITH
locked AS MATERIALIZED (
    SELECT l.owner, l.token
    FROM {schema}.leases AS l
    WHERE l.namespace = $1 AND l.key = $2
    FOR UPDATE
),
timed AS MATERIALIZED (
    SELECT l.*, coalesce($3, {schema}.micros(clock_timestamp())) AS now_us
    FROM locked AS l
),
judged AS MATERIALIZED (
    SELECT t.*,
           CASE
               WHEN t.owner IS NULL THEN 'not_found'
               WHEN t.token <> $4 THEN 'fenced'
               ELSE 'released'
           END AS verdict
    FROM timed AS t
),
applied AS (
    UPDATE {schema}.leases AS l
    SET owner = NULL, request_id = NULL, lease_expires_at = NULL, hard_expires_at = NULL,
        ttl_us = NULL, hard_ttl_us = NULL, acquired_at = NULL
    FROM judged AS j
    WHERE l.namespace = $1 AND l.key = $2 AND j.verdict = 'released'
),
logged AS (
    INSERT INTO {schema}.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'lease', $1, $2, 'lease_released', j.token, j.owner, NULL,
           {schema}.at_micros(j.now_us), NULL
    FROM judged AS j
    WHERE j.verdict = 'released'
)
SELECT j.verdict, j.token
FROM judged AS j
