-- history: a page of the events of one record: keyspace $1, namespace $2, key $3, ids above $4
-- and below $5, at most $6; the oldest, oldest first, or when $7 the newest, newest first. Each
-- branch is a range scan of the primary key (keyspace, namespace, key, id), forwards or
-- backwards; the other branch's LIMIT is 0 and reads nothing.
SELECT page.* FROM (
    (SELECT ev.id, ev.kind, ev.token, ev.owner, ev.state,
            {schema}.micros(ev.at) AS at_us, ev.detail::text AS detail
     FROM {schema}.events AS ev
     WHERE ev.keyspace = $1 AND ev.namespace = $2 AND ev.key = $3 AND ev.id > $4 AND ev.id < $5
     ORDER BY ev.id
     LIMIT CASE WHEN $7 THEN 0 ELSE $6 END)
    UNION ALL
    (SELECT ev.id, ev.kind, ev.token, ev.owner, ev.state,
            {schema}.micros(ev.at) AS at_us, ev.detail::text AS detail
     FROM {schema}.events AS ev
     WHERE ev.keyspace = $1 AND ev.namespace = $2 AND ev.key = $3 AND ev.id > $4 AND ev.id < $5
     ORDER BY ev.id DESC
     LIMIT CASE WHEN $7 THEN $6 ELSE 0 END)
) AS page
ORDER BY CASE WHEN $7 THEN page.id END DESC, page.id
