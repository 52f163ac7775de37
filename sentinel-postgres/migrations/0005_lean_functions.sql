-- Sentinel's schema, version 5: cheaper claim and complete on the server.
--
-- Measured by counting the instructions a backend executes per claim and complete of a fresh
-- key (scripts/bench-floors.sh postgres-instructions): PostgreSQL pays, per statement, to set up
-- each node and expression of its plan, including those of branches the statement never takes;
-- and PL/pgSQL pays to set up, once per transaction, each expression it evaluates. This version
-- moves work out of both.
--
-- 1. claim returns a composite type (claim_outcome) instead of OUT parameters: for a function
--    with OUT parameters, PostgreSQL rebuilds the result's row type from the catalog on every
--    call; a named type's row type is cached. The key with no row yet (the first claim, the
--    common case) takes a path of its own that evaluates four PL/pgSQL expressions instead of
--    fourteen. THE RULE OF THE CLAIM LIVES HERE from this version on (the function below
--    replaces version 4's, with the same outcomes, columns and comments).
--
-- 2. complete becomes a function too (sql/complete.sql calls it: still one statement, one round
--    trip). The completion that applies, the common case, is one UPDATE ... RETURNING and its
--    event insert; the record is judged and locked FOR UPDATE only when nothing was applied,
--    in a statement the common case never sets up. THE RULE OF COMPLETE LIVES HERE.
DO $migration$
BEGIN
-- Wakes the waiters of a record (src/notify.rs) when the transaction commits: the payload is
-- notify::digest of its namespace and key, as the statements' {notify} (src/sql.rs) sends it.
EXECUTE format($function$
CREATE FUNCTION %1$I.wake(p_channel text, p_namespace text, p_key text) RETURNS void
    LANGUAGE sql VOLATILE
    AS $body$
        SELECT pg_notify(p_channel, md5(convert_to(p_namespace, 'UTF8') || decode('00', 'hex')
                                        || convert_to(p_key, 'UTF8')))
    $body$
$function$, current_schema());

EXECUTE format($function$
CREATE TYPE %1$I.claim_outcome AS (
    outcome text, state text, owner text, token bigint, lease_expires_us bigint,
    hard_expires_us bigint, result text, fingerprint text, version bigint, watched boolean)
$function$, current_schema());

EXECUTE format($function$
DROP FUNCTION %1$I.claim(text, text, bigint, text, bigint, bigint, boolean, bytea, text, text)
$function$, current_schema());

-- claim: the "claim" rows of DESIGN §3, as sentinel_core::execution::transition (claim, grant).
--
-- p_now: manual time in µs (NULL: the server clock); p_start: straight to 'executing';
-- p_request: the request id (16 bytes); p_fingerprint: NULL for none; p_channel: the store's
-- notification channel (src/notify.rs).
--
-- The record is first judged as the read shows it. An answer that changes nothing (completed,
-- busy, uncertain, reconciling, a fingerprint mismatch, our own live claim handed back to a
-- retried call) comes from that read: no lock, no write. Only a grant writes. A key with no row
-- is granted by a plain insert; if a concurrent claim inserted the key since the read, nothing
-- is written and the outcome is 'retry'. A tombstone or an expired claim is granted by an upsert
-- whose ON CONFLICT branch locks the row and judges it again, at its latest version and at a
-- time read after the lock, so two claims can never both win; if the latest version refuses the
-- grant (a concurrent claim won between the read and the lock), nothing is written and the
-- outcome is 'retry'. The caller sends the statement again and sees that claim. The ON CONFLICT
-- branch lists `key` among the columns it sets (to its own value): that makes it lock the row
-- FOR UPDATE, which waits for a transaction holding a fence (FOR KEY SHARE). A grant of a
-- watched record notifies its waiters (migration 2); a new row is watched by nobody.
--
-- Columns (only those the outcome needs are set): outcome ('acquired', 'busy', 'uncertain',
-- 'completed', 'reconciling', 'fingerprint_mismatch' or 'retry'), state, owner, token,
-- lease_expires_us, hard_expires_us, result (JSON text), fingerprint, version, watched.
--
-- The function names its tables with the schema it is created in (current_schema(), which the
-- migrator sets), so it works whatever the caller's search_path, without a per-call SET.
EXECUTE format($function$
CREATE FUNCTION %1$I.claim(
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
    SELECT e.state, e.owner, e.token, e.request_id, e.lease_expires_at, e.hard_expires_at,
           e.result::text, e.fingerprint, e.version, e.watched
      INTO state, owner, token, request_id, lease_expires_at, hard_expires_at,
           result, fingerprint, version, watched
      FROM %1$I.executions AS e
     WHERE e.namespace = p_namespace AND e.key = p_key;
    IF NOT FOUND THEN
        -- No row at all (a key never claimed): a plain insert.
        now_us := coalesce(p_now, %1$I.micros(clock_timestamp()));
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

EXECUTE format($function$
CREATE TYPE %1$I.complete_outcome AS (verdict text, state text, token bigint)
$function$, current_schema());

-- complete: records the result of an execution (DESIGN §3 "complete"), as
-- sentinel_core::execution::transition (complete).
--
-- p_now: manual time in µs (NULL: the server clock); p_token: the completing token;
-- p_result: the result (JSON text); p_channel: the store's notification channel.
--
-- A current token completes an 'executing' record even after its lease expired (a current
-- token proves no other generation exists). The update that applies locks the row (FOR NO KEY
-- UPDATE: a fence, held by the same generation, does not delay it; completing hands the key to
-- nobody) and writes its event while it holds the lock. When it applies to nothing, the record
-- is read under FOR UPDATE, at its latest version, and judged: the same completion sent again
-- (same token, same result) succeeds without a second event; any other refusal is logged as
-- 'completion_rejected' with the result the worker reported, because an operator reconciling
-- the key may need it (a watched record's waiters hear of it, as of every logged event). A
-- record that, so locked, is executing under this very token changed after the update's
-- snapshot (the update could not see it): the verdict is 'retry', and the caller sends the
-- statement again. Results are compared as the JSON text the client serialized.
--
-- Columns: verdict ('completed', 'unchanged', 'not_found', 'fenced', 'wrong_state' or 'retry'),
-- and the record's state and token as judged.
EXECUTE format($function$
CREATE FUNCTION %1$I.complete(
    p_namespace text, p_key text, p_now bigint, p_token bigint, p_result text, p_channel text)
RETURNS %1$I.complete_outcome
LANGUAGE plpgsql
AS $body$
DECLARE
    watched boolean;
    state text;
    token bigint;
    result text;
    verdict text;
BEGIN
    WITH applied AS (
        UPDATE %1$I.executions AS e
        SET version = e.version + 1,
            state = 'completed',
            result = p_result::json,
            updated_at = coalesce(%1$I.at_micros(p_now), clock_timestamp())
        WHERE e.namespace = p_namespace AND e.key = p_key AND e.token = p_token
          AND e.state = 'executing'
        RETURNING e.owner, e.updated_at, e.watched
    )
    INSERT INTO %1$I.events AS ev (keyspace, namespace, key, kind, token, owner, state, at, detail)
    SELECT 'execution', p_namespace, p_key, 'completed', p_token, a.owner, 'completed',
           a.updated_at, NULL
    FROM applied AS a
    RETURNING (SELECT a.watched FROM applied AS a) INTO watched;
    IF FOUND THEN
        IF watched THEN
            -- Wakes the record's waiters when the event commits (src/notify.rs).
            PERFORM %1$I.wake(p_channel, p_namespace, p_key);
        END IF;
        RETURN ROW('completed', 'executing', p_token)::%1$I.complete_outcome;
    END IF;
    -- Nothing applied: judge the record as it is now, locked.
    SELECT e.state, e.token, e.result::text, e.watched INTO state, token, result, watched
      FROM %1$I.executions AS e
     WHERE e.namespace = p_namespace AND e.key = p_key
       FOR UPDATE;
    verdict := CASE
                   WHEN state IS NULL THEN 'not_found'
                   WHEN token <> p_token THEN 'fenced'
                   WHEN state = 'executing' THEN 'retry'
                   WHEN state = 'completed' AND result = p_result THEN 'unchanged'
                   ELSE 'wrong_state'
               END;
    IF verdict IN ('fenced', 'wrong_state') THEN
        INSERT INTO %1$I.events (keyspace, namespace, key, kind, token, owner, state, at, detail)
        VALUES ('execution', p_namespace, p_key, 'completion_rejected', p_token, NULL, state,
                coalesce(%1$I.at_micros(p_now), clock_timestamp()),
                json_build_object('reason', verdict, 'result', p_result::json));
        IF watched THEN
            PERFORM %1$I.wake(p_channel, p_namespace, p_key);
        END IF;
    END IF;
    RETURN ROW(verdict, state, token)::%1$I.complete_outcome;
END
$body$
$function$, current_schema());
END
$migration$;
