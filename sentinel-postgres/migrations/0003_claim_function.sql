-- Sentinel's schema, version 3: the claim transition as a PL/pgSQL function.
--
-- sql/claim.sql is `SELECT * FROM "<schema>".claim(...)`: still one statement and one round
-- trip, but most claims (a cached result, a busy key) are answered by one plain indexed read,
-- without the executor setting up the upsert and the event insert a grant needs (which a single
-- statement of data-modifying CTEs pays on every execution, ~60 µs of server time). THE RULE OF
-- THE CLAIM LIVES HERE: the "claim" rows of DESIGN §3, as sentinel_core::execution::transition
-- (claim, grant).
--
-- p_now: manual time in µs (NULL: the server clock); p_start: straight to 'executing';
-- p_request: the request id (16 bytes); p_fingerprint: NULL for none; p_channel: the store's
-- notification channel (src/notify.rs).
--
-- The record is first judged as the read shows it. An answer that changes nothing (completed,
-- busy, uncertain, reconciling, a fingerprint mismatch, our own live claim handed back to a
-- retried call) comes from that read: no lock, no write. Only a grant writes: an upsert whose
-- ON CONFLICT branch locks the row and judges it again, at its latest version and at a time read
-- after the lock, so two claims can never both win. If the latest version refuses the grant (a
-- concurrent claim won between the read and the lock), nothing is written and the outcome is
-- 'retry': the caller sends the statement again and sees that claim. The ON CONFLICT branch lists
-- `key` among the columns it sets (to its own value): that makes it lock the row FOR UPDATE,
-- which waits for a transaction holding a fence (FOR KEY SHARE). A grant of a watched record
-- notifies its waiters (migration 0002).
--
-- Output columns (only those the outcome needs are set): outcome ('acquired', 'busy',
-- 'uncertain', 'completed', 'reconciling', 'fingerprint_mismatch' or 'retry'), state, owner,
-- token, lease_expires_us, hard_expires_us, result (JSON text), fingerprint, version, watched.
--
-- The function names its tables with the schema it is created in (current_schema(), which the
-- migrator sets), so it works whatever the caller's search_path, without a per-call SET.
DO $migration$
BEGIN
EXECUTE format($function$
CREATE FUNCTION %1$I.claim(
    p_namespace text, p_key text, p_now bigint, p_owner text, p_ttl bigint, p_hard bigint,
    p_start boolean, p_request bytea, p_fingerprint text, p_channel text,
    OUT outcome text, OUT state text, OUT owner text, OUT token bigint,
    OUT lease_expires_us bigint, OUT hard_expires_us bigint, OUT result text,
    OUT fingerprint text, OUT version bigint, OUT watched boolean)
LANGUAGE plpgsql
AS $body$
DECLARE
    request_id bytea;
    lease_expires_at timestamptz;
    hard_expires_at timestamptz;
    now_us bigint;
    updated_at timestamptz;
BEGIN
    SELECT e.state, e.owner, e.token, e.request_id, e.lease_expires_at, e.hard_expires_at,
           e.result::text, e.fingerprint, e.version, e.watched
      INTO state, owner, token, request_id, lease_expires_at, hard_expires_at,
           result, fingerprint, version, watched
      FROM %1$I.executions AS e
     WHERE e.namespace = p_namespace AND e.key = p_key;
    IF state = 'completed' THEN
        -- The cached result (or a fingerprint mismatch): nothing else to judge.
        outcome := CASE WHEN fingerprint IS NOT DISTINCT FROM p_fingerprint
                        THEN 'completed' ELSE 'fingerprint_mismatch' END;
        RETURN;
    END IF;
    now_us := coalesce(p_now, %1$I.micros(clock_timestamp()));
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
            lease_expires_us := %1$I.micros(lease_expires_at);
            hard_expires_us := %1$I.micros(hard_expires_at);
            RETURN;
        END IF;
        -- Expired and claimed, or expired and executing under our own request: claimable.
    END IF;
    -- No record, a tombstone, or a claimable one: grant, judging again under the row lock.
    INSERT INTO %1$I.executions AS e
        (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
         ttl_us, hard_ttl_us, result, fingerprint, created_at, updated_at, version)
    VALUES (p_namespace, p_key, greatest(1, now_us),
            CASE WHEN p_start THEN 'executing' ELSE 'claimed' END, p_owner, p_request,
            %1$I.at_micros(least(now_us + p_ttl, 253402300799999999)),
            %1$I.at_micros(least(now_us + p_hard, 253402300799999999)),
            p_ttl, p_hard, NULL, p_fingerprint, %1$I.at_micros(now_us),
            %1$I.at_micros(now_us), 1)
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
        outcome := 'retry';
        RETURN;
    END IF;
    INSERT INTO %1$I.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
    VALUES ('execution', p_namespace, p_key, 'claimed', token, owner, state, updated_at, NULL);
    IF watched THEN
        -- Wakes the record's waiters when the event commits (src/notify.rs).
        PERFORM pg_notify(p_channel, md5(convert_to(p_namespace, 'UTF8') || decode('00', 'hex')
                                         || convert_to(p_key, 'UTF8')));
    END IF;
    outcome := 'acquired';
    result := NULL;
END
$body$
$function$, current_schema());
END
$migration$;
