-- inspect: the execution record of ($1 namespace, $2 key), if any (a tombstone is none).
SELECT e.namespace, e.key, e.state, e.owner, e.token, e.request_id,
       {schema}.micros(e.lease_expires_at) AS lease_expires_us,
       {schema}.micros(e.hard_expires_at) AS hard_expires_us,
       e.ttl_us, e.hard_ttl_us, e.result::text AS result, e.fingerprint,
       {schema}.micros(e.created_at) AS created_us,
       {schema}.micros(e.updated_at) AS updated_us
FROM {schema}.executions AS e
WHERE e.namespace = $1 AND e.key = $2 AND e.state IS NOT NULL
