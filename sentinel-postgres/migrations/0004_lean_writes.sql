-- Sentinel's schema, version 4: leaner writes on the hot path.
--
-- 1. The CHECK constraints of version 1 go. PostgreSQL rebuilds every CHECK expression of a table
--    from its stored text for each statement that writes to the table, so these cost a parse of
--    ~7 KB of node text per write (~140 µs of server CPU per fresh once(), measured with pgbench:
--    one claim and one complete against the same pair without the constraints). What they
--    guarded still holds three ways: every write is one of Sentinel's statements (sql/, the claim
--    function), each setting whole records; the conformance kit checks every transition against
--    the core's state machine; and every read decodes the row strictly (src/rows.rs), reporting a
--    row that breaks a rule as a corrupt record rather than trusting it.
--
-- 2. The claim function (migration 3) gains a plain insert for a key that has no row yet: the
--    first claim of a key, the common case, no longer sets up the upsert's ON CONFLICT branch.
--    THE RULE OF THE CLAIM LIVES HERE from this version on (the function below replaces version
--    3's); the header of migration 3 describes the rest of it, unchanged.
ALTER TABLE executions
    DROP CONSTRAINT IF EXISTS executions_token_check,
    DROP CONSTRAINT IF EXISTS executions_state_check,
    DROP CONSTRAINT IF EXISTS executions_request_id_check,
    DROP CONSTRAINT IF EXISTS executions_ttl_us_check,
    DROP CONSTRAINT IF EXISTS executions_record_is_whole,
    DROP CONSTRAINT IF EXISTS executions_lease_within_hard,
    DROP CONSTRAINT IF EXISTS executions_hard_ttl_covers_ttl;
ALTER TABLE leases
    DROP CONSTRAINT IF EXISTS leases_token_check,
    DROP CONSTRAINT IF EXISTS leases_request_id_check,
    DROP CONSTRAINT IF EXISTS leases_ttl_us_check,
    DROP CONSTRAINT IF EXISTS leases_record_is_whole,
    DROP CONSTRAINT IF EXISTS leases_lease_within_hard,
    DROP CONSTRAINT IF EXISTS leases_hard_ttl_covers_ttl;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_keyspace_check;

DO $migration$
BEGIN
EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.claim(
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
    found_row boolean;
    new_state text;
    new_lease timestamptz;
    new_hard timestamptz;
    new_at timestamptz;
BEGIN
    SELECT e.state, e.owner, e.token, e.request_id, e.lease_expires_at, e.hard_expires_at,
           e.result::text, e.fingerprint, e.version, e.watched
      INTO state, owner, token, request_id, lease_expires_at, hard_expires_at,
           result, fingerprint, version, watched
      FROM %1$I.executions AS e
     WHERE e.namespace = p_namespace AND e.key = p_key;
    found_row := FOUND;
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
    -- The record a grant writes, if the row is still as read (the upsert recomputes the times
    -- under the lock).
    new_state := CASE WHEN p_start THEN 'executing' ELSE 'claimed' END;
    new_lease := %1$I.at_micros(least(now_us + p_ttl, 253402300799999999));
    new_hard := %1$I.at_micros(least(now_us + p_hard, 253402300799999999));
    new_at := %1$I.at_micros(now_us);
    IF NOT found_row THEN
        -- No row at all (a key never claimed): a plain insert. If a concurrent claim inserted
        -- the key since the read, nothing is written and the outcome is 'retry'.
        INSERT INTO %1$I.executions AS e
            (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
             ttl_us, hard_ttl_us, result, fingerprint, created_at, updated_at, version)
        VALUES (p_namespace, p_key, greatest(1, now_us), new_state, p_owner, p_request,
                new_lease, new_hard, p_ttl, p_hard, NULL, p_fingerprint, new_at, new_at, 1)
        ON CONFLICT (namespace, key) DO NOTHING
        RETURNING e.state, e.owner, e.token, %1$I.micros(e.lease_expires_at),
                  %1$I.micros(e.hard_expires_at), e.updated_at, e.version, e.watched
             INTO state, owner, token, lease_expires_us, hard_expires_us, updated_at, version,
                  watched;
    ELSE
        -- A tombstone or a claimable record: grant, judging again under the row lock.
        INSERT INTO %1$I.executions AS e
            (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
             ttl_us, hard_ttl_us, result, fingerprint, created_at, updated_at, version)
        VALUES (p_namespace, p_key, greatest(1, now_us), new_state, p_owner, p_request,
                new_lease, new_hard, p_ttl, p_hard, NULL, p_fingerprint, new_at, new_at, 1)
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
    END IF;
    IF NOT FOUND THEN
        -- A concurrent claim won between the read and the insert or the lock: nothing written.
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
