-- complete: records the result of an execution (DESIGN §3 "complete"), as
-- sentinel_core::execution::transition (complete).
-- THE RULE LIVES IN THE FUNCTION: migrations/0005_lean_functions.sql (one statement, one round
-- trip; a completion that applies is one update and its event, and only a refusal is judged
-- under a FOR UPDATE lock).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 token,
-- $5 result (JSON text). Verdicts: 'completed', 'unchanged' (the same completion again, nothing
-- written), 'not_found', 'fenced', 'wrong_state' (the last two logged as 'completion_rejected'),
-- 'retry' (the record changed under the update: send again).
--
-- Run inside the caller's own transaction by PostgresStore::complete_in through
-- sql/complete_in.sql, which calls the same function under READ COMMITTED only.
SELECT c.verdict, c.state, c.token
FROM {schema}.complete($1, $2, $3, $4, $5, '{channel}') AS c
