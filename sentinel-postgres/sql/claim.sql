-- claim: the "claim" rows of DESIGN §3, as sentinel_core::execution::transition (claim, grant).
-- THE RULE LIVES IN THE FUNCTION: migrations/0006_claim_reads_the_clock_first.sql (one statement,
-- one round trip; most claims are one plain read inside it, only a grant writes).
--
-- $1 namespace, $2 key, $3 manual time in µs (NULL: the server clock), $4 owner, $5 ttl µs,
-- $6 hard ttl µs, $7 start (true: straight to 'executing'), $8 request id (16 bytes),
-- $9 fingerprint (NULL: none).
SELECT c.outcome, c.state, c.owner, c.token, c.lease_expires_us, c.hard_expires_us, c.result,
       c.fingerprint, c.version, c.watched
FROM {schema}.claim($1, $2, $3, $4, $5, $6, $7, $8, $9, '{channel}') AS c
