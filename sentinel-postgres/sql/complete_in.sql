-- complete_in: sql/complete.sql inside the caller's transaction (PostgresStore::complete_in):
-- the same function, so THE RULE STILL LIVES IN migrations/0005_lean_functions.sql.
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 token, $5 result
-- (JSON text). Columns: those of complete.sql, and the transaction's level in `isolation`.
--
-- The function is called only under READ COMMITTED (PostgreSQL runs READ UNCOMMITTED as READ
-- COMMITTED). Under REPEATABLE READ or SERIALIZABLE its update fails to serialize (40001)
-- whenever a heartbeat renewed the record after the transaction's snapshot was taken, that is
-- after any tick between the transaction's first statement and this one, and its judging read
-- sees that snapshot. Such a transaction gets the verdict 'not_read_committed': the function is
-- not called, nothing is written. CASE evaluates only the branch it takes, and the function is
-- VOLATILE, so it is never evaluated ahead of the test; the CTE is MATERIALIZED so that reading
-- its fields calls it once.
WITH
level AS MATERIALIZED (
    SELECT current_setting('transaction_isolation') AS isolation
),
outcome AS MATERIALIZED (
    SELECT l.isolation,
           CASE WHEN l.isolation IN ('read committed', 'read uncommitted')
                THEN {schema}.complete($1, $2, $3, $4, $5, '{channel}')
           END AS c
    FROM level AS l
)
SELECT coalesce((o.c).verdict, 'not_read_committed') AS verdict, (o.c).state, (o.c).token,
       o.isolation
FROM outcome AS o
