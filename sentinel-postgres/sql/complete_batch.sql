-- complete_batch: several concurrent completions in one statement (src/batch.rs), each by the
-- same function as sql/complete.sql, so THE RULE STILL LIVES IN
-- migrations/0005_lean_functions.sql.
--
-- $1 namespaces, $2 keys, $3 tokens, $4 results (JSON text) (parallel arrays, one element per
-- completion, sorted by namespace and key), $5 manual time in µs (NULL: the server clock).
--
-- The completions run one after the other, in the order of the arrays, in one transaction, and
-- lock their rows in key order, the order the heartbeat locks them in, so two batches never
-- deadlock. Answers come back in the order of the arrays.
SELECT c.verdict, c.state, c.token
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
     WITH ORDINALITY AS a (namespace, key, token, result, ord)
     CROSS JOIN LATERAL {schema}.complete(a.namespace, a.key, $5, a.token, a.result,
                                          '{channel}') AS c
ORDER BY a.ord
