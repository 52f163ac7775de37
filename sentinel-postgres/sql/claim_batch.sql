-- claim_batch: several concurrent claims in one statement (src/batch.rs), each by the same
-- function as sql/claim.sql, so THE RULE STILL LIVES IN
-- migrations/0006_claim_reads_the_clock_first.sql.
--
-- $1 namespaces, $2 keys, $3 owners, $4 ttls µs, $5 hard ttls µs, $6 starts, $7 request ids,
-- $8 fingerprints (parallel arrays, one element per claim, sorted by namespace and key), $9
-- manual time in µs (NULL: the server clock).
--
-- The claims run one after the other, in the order of the arrays, in one transaction: each sees
-- the writes of the ones before it (the function is VOLATILE), so two claims of one key in a
-- batch are judged like two calls in a row. Rows are locked in key order, the order the heartbeat
-- locks them in, so two batches never deadlock. Answers come back in the order of the arrays.
SELECT c.outcome, c.state, c.owner, c.token, c.lease_expires_us, c.hard_expires_us, c.result,
       c.fingerprint, c.version, c.watched
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::boolean[],
            $7::bytea[], $8::text[])
     WITH ORDINALITY AS a (namespace, key, owner, ttl, hard, start, request, fingerprint, ord)
     CROSS JOIN LATERAL {schema}.claim(a.namespace, a.key, $9, a.owner, a.ttl, a.hard, a.start,
                                       a.request, a.fingerprint, '{channel}') AS c
ORDER BY a.ord
