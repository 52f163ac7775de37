-- Sentinel's schema, version 6: claim reads the clock before the record.
--
-- Version 5's claim read the record with a plain SELECT, read the clock afterwards, and judged
-- the record as read at that later time; its 'uncertain' answer (executing, lease expired, not
-- our request) came from that read alone, never judged again under a lock. A heartbeat, complete
-- or abort(not_applied) of the holder that committed between the read and the clock reading was
-- not seen: the stale lease, judged at a time after its end, made a live execution (right answer:
-- busy) or a completed one (right answer: its result) look uncertain, although at no instant was
-- it both executing and expired. once() then returned Uncertain, and an operator's reconcile was
-- refused (still alive, or wrong state).
--
-- This version replaces the claim function by version 5's with one change: the clock is read
-- first. The read then comes after the clock, so a lease it shows as expired at that time was
-- expired when the read was made, and 'uncertain' is true of that instant. Judging 'uncertain'
-- again under a row lock would also do, but costs a lock on an answer that today takes none;
-- reading the clock first costs nothing. A manual time (p_now) is used instead of the clock, as
-- before. Same signature and result type (CREATE OR REPLACE keeps the function and its type), so
-- statements prepared before this version keep working. THE RULE OF THE CLAIM LIVES HERE from
-- this version on; complete's stays in version 5.
DO $migration$
BEGIN
-- claim: the "claim" rows of DESIGN §3, as sentinel_core::execution::transition (claim, grant).
--
-- p_now: manual time in µs (NULL: the server clock); p_start: straight to 'executing';
-- p_request: the request id (16 bytes); p_fingerprint: NULL for none; p_channel: the store's
-- notification channel (src/notify.rs).
--
-- The clock is read first, then the record, which is judged as the read shows it at that time. An
-- answer that changes nothing (completed, busy, uncertain, reconciling, a fingerprint mismatch,
-- our own live claim handed back to a retried call) comes from that read: no lock, no write. The
-- read comes after the clock: a lease it shows as expired at that time was expired when the read
-- was made, so 'uncertain' is never judged from a version that a heartbeat, complete or abort has
-- since replaced (version 5 read the clock last, and could). A lease that ends between the clock
-- and the read is judged alive: busy, a moment early, as with a time given by the caller. Only a
-- grant writes. A key with no row is granted by a plain insert; if a concurrent claim inserted the
-- key since the read, nothing is written and the outcome is 'retry'. A tombstone or an expired
-- claim is granted by an upsert whose ON CONFLICT branch locks the row and judges it again, at its
-- latest version and at a time read after the lock, so two claims can never both win; if the
-- latest version refuses the grant (a concurrent claim won between the read and the lock), nothing
-- is written and the outcome is 'retry'. The caller sends the statement again and sees that claim.
-- The ON CONFLICT branch lists `key` among the columns it sets (to its own value): that makes it
-- lock the row FOR UPDATE, which waits for a transaction holding a fence (FOR KEY SHARE). A grant
-- of a watched record notifies its waiters (migration 2); a new row is watched by nobody.
--
-- Columns (only those the outcome needs are set): outcome ('acquired', 'busy', 'uncertain',
-- 'completed', 'reconciling', 'fingerprint_mismatch' or 'retry'), state, owner, token,
-- lease_expires_us, hard_expires_us, result (JSON text), fingerprint, version, watched.
--
-- The function names its tables with the schema it is created in (current_schema(), which the
-- migrator sets), so it works whatever the caller's search_path, without a per-call SET.
EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.claim(
    p_namespace text, p_key text, p_now bigint, p_owner text, p_ttl bigint, p_hard bigint,
    p_start boolean, p_request bytea, p_fingerprint text, p_channel text)
RETURNS %1$I.claim_outcome
LANGUAGE plpgsql
AS $body$
DECLARE
    outcome text;
    state text;
    owner text;
    token bigint;
    request_id bytea;
    lease_expires_at timestamptz;
    hard_expires_at timestamptz;
    lease_expires_us bigint;
    hard_expires_us bigint;
    result text;
    fingerprint text;
    version bigint;
    watched boolean;
    now_us bigint;
    updated_at timestamptz;
BEGIN
    -- The clock before the record (see above): a read taken after the clock can only show a
    -- lease that was current at that time or later.
    now_us := coalesce(p_now, %1$I.micros(clock_timestamp()));
    SELECT e.state, e.owner, e.token, e.request_id, e.lease_expires_at, e.hard_expires_at,
           e.result::text, e.fingerprint, e.version, e.watched
      INTO state, owner, token, request_id, lease_expires_at, hard_expires_at,
           result, fingerprint, version, watched
      FROM %1$I.executions AS e
     WHERE e.namespace = p_namespace AND e.key = p_key;
    IF NOT FOUND THEN
        -- No row at all (a key never claimed): a plain insert.
        INSERT INTO %1$I.executions AS e
            (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
             ttl_us, hard_ttl_us, result, fingerprint, created_at, updated_at, version)
        VALUES (p_namespace, p_key, greatest(1, now_us),
                CASE WHEN p_start THEN 'executing' ELSE 'claimed' END, p_owner, p_request,
                %1$I.at_micros(least(now_us + p_ttl, 253402300799999999)),
                %1$I.at_micros(least(now_us + p_hard, 253402300799999999)),
                p_ttl, p_hard, NULL, p_fingerprint, %1$I.at_micros(now_us),
                %1$I.at_micros(now_us), 1)
        ON CONFLICT (namespace, key) DO NOTHING
        RETURNING e.state, e.owner, e.token, %1$I.micros(e.lease_expires_at),
                  %1$I.micros(e.hard_expires_at), e.updated_at
             INTO state, owner, token, lease_expires_us, hard_expires_us, updated_at;
        IF NOT FOUND THEN
            -- A concurrent claim inserted the key since the read: nothing written.
            RETURN ROW('retry', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
                   ::%1$I.claim_outcome;
        END IF;
        INSERT INTO %1$I.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
        VALUES ('execution', p_namespace, p_key, 'claimed', token, owner, state, updated_at, NULL);
        RETURN ROW('acquired', state, owner, token, lease_expires_us, hard_expires_us, NULL,
                   p_fingerprint, 1, false)::%1$I.claim_outcome;
    END IF;
    IF state = 'completed' THEN
        -- The cached result (or a fingerprint mismatch): nothing else to judge.
        RETURN ROW(CASE WHEN fingerprint IS NOT DISTINCT FROM p_fingerprint
                        THEN 'completed' ELSE 'fingerprint_mismatch' END,
                   state, owner, token, NULL, NULL, result, fingerprint, version, watched)
               ::%1$I.claim_outcome;
    END IF;
    IF state IS NOT NULL THEN
        IF fingerprint IS DISTINCT FROM p_fingerprint THEN
            outcome := 'fingerprint_mismatch';
        ELSIF state = 'reconciling' THEN
            outcome := 'reconciling';
        ELSIF %1$I.at_micros(now_us) < lease_expires_at THEN
            -- Alive: our own claim handed back to a retried call, or someone else's.
            outcome := CASE WHEN request_id = p_request THEN 'acquired' ELSE 'busy' END;
        ELSIF state = 'executing' AND request_id IS DISTINCT FROM p_request THEN
            -- Expired while executing, and not ours: the outcome is unknown.
            outcome := 'uncertain';
        END IF;
        IF outcome IS NOT NULL THEN
            RETURN ROW(outcome, state, owner, token, %1$I.micros(lease_expires_at),
                       %1$I.micros(hard_expires_at), result, fingerprint, version, watched)
                   ::%1$I.claim_outcome;
        END IF;
        -- Expired and claimed, or expired and executing under our own request: claimable.
    END IF;
    -- A tombstone or a claimable record: grant, judging again under the row lock.
    INSERT INTO %1$I.executions AS e
        (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
         ttl_us, hard_ttl_us, result, fingerprint, created_at, updated_at, version)
    VALUES (p_namespace, p_key, greatest(1, now_us),
            CASE WHEN p_start THEN 'executing' ELSE 'claimed' END, p_owner, p_request,
            %1$I.at_micros(least(now_us + p_ttl, 253402300799999999)),
            %1$I.at_micros(least(now_us + p_hard, 253402300799999999)),
            p_ttl, p_hard, NULL, p_fingerprint, %1$I.at_micros(now_us), %1$I.at_micros(now_us), 1)
    ON CONFLICT (namespace, key) DO UPDATE
    SET (key, state, owner, token, request_id, lease_expires_at, hard_expires_at, ttl_us,
         hard_ttl_us, result, fingerprint, created_at, updated_at, version) =
        (SELECT e.key, excluded.state, excluded.owner,
                greatest(e.token + 1, t.now_us), -- FencingToken::next
                excluded.request_id,
                %1$I.at_micros(least(t.now_us + p_ttl, 253402300799999999)),
                %1$I.at_micros(least(t.now_us + p_hard, 253402300799999999)),
                excluded.ttl_us, excluded.hard_ttl_us, NULL::json, excluded.fingerprint,
                CASE WHEN e.state IS NULL THEN %1$I.at_micros(t.now_us) ELSE e.created_at END,
                %1$I.at_micros(t.now_us), e.version + 1
         FROM (SELECT coalesce(p_now, %1$I.micros(clock_timestamp())) AS now_us) AS t)
    WHERE e.state IS NULL
       OR (e.fingerprint IS NOT DISTINCT FROM p_fingerprint
           AND NOT (%1$I.at_micros(coalesce(p_now, %1$I.micros(clock_timestamp())))
                    < e.lease_expires_at)
           AND (e.state = 'claimed' OR (e.state = 'executing' AND e.request_id = p_request)))
    RETURNING e.state, e.owner, e.token, %1$I.micros(e.lease_expires_at),
              %1$I.micros(e.hard_expires_at), e.updated_at, e.version, e.watched
         INTO state, owner, token, lease_expires_us, hard_expires_us, updated_at, version,
              watched;
    IF NOT FOUND THEN
        -- A concurrent claim won between the read and the lock: nothing written.
        RETURN ROW('retry', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
               ::%1$I.claim_outcome;
    END IF;
    INSERT INTO %1$I.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
    VALUES ('execution', p_namespace, p_key, 'claimed', token, owner, state, updated_at, NULL);
    IF watched THEN
        -- Wakes the record's waiters when the event commits (src/notify.rs).
        PERFORM %1$I.wake(p_channel, p_namespace, p_key);
    END IF;
    RETURN ROW('acquired', state, owner, token, lease_expires_us, hard_expires_us, NULL,
               p_fingerprint, version, watched)::%1$I.claim_outcome;
END
$body$
$function$, current_schema());
END
$migration$;
