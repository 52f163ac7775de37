-- Sentinel's schema, version 1.
--
-- Names are unqualified: `sentinel_postgres::migrate` (and the `Migrator` from
-- `sentinel_postgres::migrator`) runs this file inside a transaction that starts with
-- `SET LOCAL search_path TO "<schema>"`, so every object lands in the configured schema.
-- To apply it with other tooling, set the search_path the same way first.
--
-- Layout (DESIGN §2): one row per (namespace, key) and keyspace. A row whose `state` (executions)
-- or `owner` (leases) is NULL is a tombstone: the record was purged or released, and the row only
-- keeps `token`, the last fencing token issued, so tokens keep increasing. Namespace and key are
-- separate columns, compared bytewise (COLLATE "C"), never joined into one string.

-- Whole microseconds since the Unix epoch of a timestamp. Exact: extract() returns numeric.
CREATE FUNCTION micros(t timestamptz) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM t) * 1000000)::bigint $$;

-- The timestamp `us` microseconds after the Unix epoch. Exact for every instant of years
-- 1970..9999: whole seconds go through float8 (exact below 2^53), the rest is added as an interval.
CREATE FUNCTION at_micros(us bigint) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT to_timestamp((us / 1000000)::double precision) + (us % 1000000) * interval '1 microsecond' $$;

CREATE TABLE executions (
    namespace        text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    -- The current fencing token; on a tombstone, the last token issued for the key.
    token            bigint      NOT NULL CHECK (token > 0),
    state            text        CHECK (state IN ('claimed', 'executing', 'completed', 'reconciling')),
    owner            text,
    -- The 128-bit id of the claim call granted the current token (NULL after a reconcile).
    request_id       bytea       CHECK (octet_length(request_id) = 16),
    lease_expires_at timestamptz,
    hard_expires_at  timestamptz,
    ttl_us           bigint      CHECK (ttl_us > 0),
    hard_ttl_us      bigint,
    -- The result exactly as the worker serialized it (json keeps the text as given).
    result           json,
    fingerprint      text,
    created_at       timestamptz,
    updated_at       timestamptz,
    PRIMARY KEY (namespace, key),
    CONSTRAINT executions_record_is_whole CHECK (
        (state IS NULL) = (owner IS NULL)
        AND (state IS NULL) = (lease_expires_at IS NULL)
        AND (state IS NULL) = (hard_expires_at IS NULL)
        AND (state IS NULL) = (ttl_us IS NULL)
        AND (state IS NULL) = (hard_ttl_us IS NULL)
        AND (state IS NULL) = (created_at IS NULL)
        AND (state IS NULL) = (updated_at IS NULL)
        AND (state IS NOT NULL OR (request_id IS NULL AND result IS NULL AND fingerprint IS NULL))
    ),
    CONSTRAINT executions_lease_within_hard CHECK (lease_expires_at <= hard_expires_at),
    CONSTRAINT executions_hard_ttl_covers_ttl CHECK (hard_ttl_us >= ttl_us)
) WITH (fillfactor = 90);

-- The reconciliation queue: executing records in key order (`list` of uncertain executions,
-- which are executing and expired, pages through this index). Partial, so that completing an
-- execution adds no entry to it.
CREATE INDEX executions_executing ON executions (namespace, key) WHERE state = 'executing';

-- Purging the oldest completed records first.
CREATE INDEX executions_completed ON executions (namespace, updated_at, key)
    WHERE state = 'completed';

CREATE TABLE leases (
    namespace        text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    -- The holder's fencing token; once released, the last token issued for the key.
    token            bigint      NOT NULL CHECK (token > 0),
    owner            text,
    request_id       bytea       CHECK (octet_length(request_id) = 16),
    lease_expires_at timestamptz,
    hard_expires_at  timestamptz,
    ttl_us           bigint      CHECK (ttl_us > 0),
    hard_ttl_us      bigint,
    acquired_at      timestamptz,
    PRIMARY KEY (namespace, key),
    CONSTRAINT leases_record_is_whole CHECK (
        (owner IS NULL) = (request_id IS NULL)
        AND (owner IS NULL) = (lease_expires_at IS NULL)
        AND (owner IS NULL) = (hard_expires_at IS NULL)
        AND (owner IS NULL) = (ttl_us IS NULL)
        AND (owner IS NULL) = (hard_ttl_us IS NULL)
        AND (owner IS NULL) = (acquired_at IS NULL)
    ),
    CONSTRAINT leases_lease_within_hard CHECK (lease_expires_at <= hard_expires_at),
    CONSTRAINT leases_hard_ttl_covers_ttl CHECK (hard_ttl_us >= ttl_us)
) WITH (fillfactor = 90);

-- The append-only history of every record (DESIGN §7), written by the same statement as the
-- transition it records. Ids increase along each record's history: every event of a record is
-- written while its row is locked.
CREATE TABLE events (
    id        bigint GENERATED ALWAYS AS IDENTITY,
    keyspace  text        NOT NULL CHECK (keyspace IN ('execution', 'lease')),
    namespace text COLLATE "C" NOT NULL,
    key       text COLLATE "C" NOT NULL,
    kind      text        NOT NULL,
    token     bigint      NOT NULL,
    owner     text,
    state     text,
    at        timestamptz NOT NULL,
    detail    json,
    -- One index serves both: unique (id alone is), and a record's history in order.
    PRIMARY KEY (keyspace, namespace, key, id)
);
