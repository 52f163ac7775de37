-- history: the events of one record, oldest first: keyspace $1, namespace $2, key $3, ids above
-- $4, at most $5. Served by the primary key (keyspace, namespace, key, id).
SELECT ev.id, ev.kind, ev.token, ev.owner, ev.state,
       {schema}.micros(ev.at) AS at_us, ev.detail::text AS detail
FROM {schema}.events AS ev
WHERE ev.keyspace = $1 AND ev.namespace = $2 AND ev.key = $3 AND ev.id > $4
ORDER BY ev.id
LIMIT $5
