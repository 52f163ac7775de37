-- list_executing: list.sql for executing records only, served by the partial index
-- executions_executing (namespace, key) WHERE state = 'executing': only executing records are
-- scanned. The reconciliation queue (uncertain executions) is this with $4 (expired) true.
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
  AND e.state = 'executing'
  AND e.key > $2
  AND (NOT $4 OR e.lease_expires_at <= (SELECT {schema}.at_micros(c.now_us) FROM clock AS c))
  AND ($5::bigint IS NULL
       OR e.updated_at <= (SELECT {schema}.at_micros(greatest(c.now_us - $5, 0)) FROM clock AS c))
ORDER BY e.key
LIMIT $6
