-- inspect_lease: the lease record of ($1 namespace, $2 key) while held, even if expired.
SELECT l.namespace, l.key, l.owner, l.token, l.request_id,
       {schema}.micros(l.lease_expires_at) AS lease_expires_us,
       {schema}.micros(l.hard_expires_at) AS hard_expires_us,
       l.ttl_us, l.hard_ttl_us,
       {schema}.micros(l.acquired_at) AS acquired_us
FROM {schema}.leases AS l
WHERE l.namespace = $1 AND l.key = $2 AND l.owner IS NOT NULL
