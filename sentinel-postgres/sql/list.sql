-- list: a page of the execution records of namespace $1 in bytewise key order, after key $2
-- ('' for the first page), at most $6 rows. $3 manual time in µs (NULL: the server clock);
-- $4 true: only expired leases; $5: only records last changed at least $5 µs ago (NULL: any);
-- $7: only records in this state (NULL: any). Served by the primary key (namespace, key);
-- executing records are listed by list_executing.sql instead.
WITH clock AS MATERIALIZED (
    SELECT coalesce($3, {schema}.micros(clock_timestamp())) AS now_us
)
SELECT e.namespace, e.key, e.state, e.owner, e.token, e.request_id,
       {schema}.micros(e.lease_expires_at) AS lease_expires_us,
       {schema}.micros(e.hard_expires_at) AS hard_expires_us,
       e.ttl_us, e.hard_ttl_us, e.result::text AS result, e.fingerprint,
       {schema}.micros(e.created_at) AS created_us,
       {schema}.micros(e.updated_at) AS updated_us
FROM {schema}.executions AS e
WHERE e.namespace = $1
  AND e.key > $2
  AND e.state IS NOT NULL
  AND ($7::text IS NULL OR e.state = $7)
  AND (NOT $4 OR e.lease_expires_at <= (SELECT {schema}.at_micros(c.now_us) FROM clock AS c))
  AND ($5::bigint IS NULL
       OR e.updated_at <= (SELECT {schema}.at_micros(greatest(c.now_us - $5, 0)) FROM clock AS c))
ORDER BY e.key
LIMIT $6
