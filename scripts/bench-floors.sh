#!/usr/bin/env bash
# How close can a fresh once() get to the raw baselines of the benchmarks, before any Rust runs?
# Measures the server side alone, with the servers' own C load generators (pgbench,
# redis-benchmark), so the numbers carry none of the Rust client's CPU:
#
#   ./scripts/bench-floors.sh postgres                # pgbench: three statement pairs
#   ./scripts/bench-floors.sh postgres-instructions   # the same, instructions counted (valgrind)
#   ./scripts/bench-floors.sh redis                   # redis-benchmark: four single commands
#
# PostgreSQL (SENTINEL_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres),
# in a scratch schema that is dropped afterwards, with every migration of sentinel-postgres:
#   baseline  the raw pair of benches/once.rs: INSERT … ON CONFLICT DO NOTHING, then UPDATE;
#   sentinel  Sentinel's own claim (sql/claim.sql) and complete (sql/complete.sql) statements;
#   floor     the least one statement per transition can do under DESIGN §7: a PL/pgSQL function
#             inserting the record and its event, then an UPDATE and its event in one statement;
#   batch4    Sentinel's statements for four calls at once, as a store sends calls that queue
#             under load (sql/claim_batch.sql, then sql/complete_batch.sql): four pairs each.
# Each pair runs alone at 1 and 8 clients, in turns; the ratio is of pairs per second. The key of
# each pair comes from a sequence. (Pairs interleaved in one pgbench run would share the CPU
# queue, which evens their latencies out when the cores are saturated: at 8 clients that hid most
# of the difference.) postgres-instructions counts what the server executes for each pair, and
# for a cached read on each side (see postgres_instructions below).
#
# Redis (SENTINEL_BENCH_REDIS_HOST/PORT, default 127.0.0.1:6379), at 8 clients, on fresh keys:
# SET NX PX (the raw claim), a script that only sends that SET, a script writing only a record
# hash, a script adding one entry to a new per-key stream and writing the hash (the two writes
# every fresh claim makes), and Sentinel's own claim script. The database is flushed afterwards:
# use a server that holds nothing else.
#
# SENTINEL_BENCH_SECONDS (default 15) sets each pgbench run; redis-benchmark sends 200000 calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Creates, in schema $2 of server $1, every migration of sentinel-postgres, the baseline's table,
# the floor's claim function and a key sequence; writes to directory $3 the pgbench scripts of
# the three fresh pairs (baseline.sql, sentinel.sql, floor.sql) and, for the instruction counts,
# pairs.sql: the same pairs (and a cached read for each side) as PL/pgSQL statements on a key `k`.
postgres_setup() {
    local url=$1 schema=$2 dir=$3
    psql -q -v ON_ERROR_STOP=1 "$url" -c "CREATE SCHEMA $schema"
    local m
    for m in sentinel-postgres/migrations/*.sql; do
        { echo "BEGIN; SET LOCAL search_path TO $schema;"
          cat "$m"
          echo "COMMIT;"; } | psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null
    done
    psql -q -v ON_ERROR_STOP=1 "$url" >/dev/null <<SQL
CREATE SEQUENCE $schema.keys;
CREATE TABLE $schema.baseline (
    namespace text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
    state text NOT NULL, owner text NOT NULL, token bigint NOT NULL,
    lease_expires_at timestamptz NOT NULL, result json,
    PRIMARY KEY (namespace, key));
CREATE FUNCTION $schema.floor_claim(p_key text, OUT token bigint) LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO $schema.executions AS e
        (namespace, key, token, state, owner, request_id, lease_expires_at, hard_expires_at,
         ttl_us, hard_ttl_us, created_at, updated_at, version)
    VALUES ('bench', p_key, 1, 'executing', 'w', '\x00112233445566778899aabbccddeeff',
            clock_timestamp() + interval '30 s', clock_timestamp() + interval '60 s',
            30000000, 60000000, clock_timestamp(), clock_timestamp(), 1)
    ON CONFLICT (namespace, key) DO NOTHING RETURNING e.token INTO token;
    INSERT INTO $schema.events (keyspace, namespace, key, kind, token, owner, state, at)
    VALUES ('execution', 'bench', p_key, 'claimed', token, 'w', 'executing', clock_timestamp());
END \$\$;
SQL
    # Each statement with the key (and token) as $1 ($2): for pgbench as :key (:token), for
    # PL/pgSQL as k (tok).
    local baseline_claim baseline_complete floor_complete
    baseline_claim="INSERT INTO $schema.baseline (namespace, key, state, owner, token, lease_expires_at) VALUES ('bench', \$1, 'executing', 'w', 1, clock_timestamp() + interval '30 seconds') ON CONFLICT (namespace, key) DO NOTHING RETURNING token"
    baseline_complete="UPDATE $schema.baseline SET state = 'completed', result = '\"ch\"'::json WHERE namespace = 'bench' AND key = \$1 AND token = \$2"
    floor_complete="WITH done AS (UPDATE $schema.executions AS e SET state = 'completed', result = '\"ch\"'::json, updated_at = clock_timestamp(), version = e.version + 1 WHERE e.namespace = 'bench' AND e.key = \$1 AND e.token = \$2 AND e.state = 'executing' RETURNING e.owner, e.updated_at) INSERT INTO $schema.events (keyspace, namespace, key, kind, token, owner, state, at) SELECT 'execution', 'bench', \$1, 'completed', \$2, d.owner, 'completed', d.updated_at FROM done AS d"
    # Sentinel's statements, rendered as the store renders them (src/sql.rs), with the
    # parameters of a claim-and-start and of its completion.
    local key token
    sentinel() {
        key=$1 token=$2
        claim=$(render sentinel-postgres/sql/claim.sql "$schema" \
            "'bench'" "$key" "NULL::bigint" "'w'" "30000000" "60000000" "true" \
            "'\\x00112233445566778899aabbccddeeff'::bytea" "NULL::text")
        complete=$(render sentinel-postgres/sql/complete.sql "$schema" \
            "'bench'" "$key" "NULL::bigint" "$token" "'\"ch\"'")
    }
    local claim complete next_key="SELECT 'k' || nextval('$schema.keys') AS key \\gset"
    for_pgbench() { sed "s/\\\$1/:key/g; s/\\\$2/:token/g" <<<"$1"; }
    sentinel ":key" ":token"
    printf '%s\n%s \\gset\n%s;\n' "$next_key" "$claim" "$complete" >"$dir/sentinel.sql"
    printf '%s\n%s \\gset\n%s;\n' "$next_key" "$(for_pgbench "$baseline_claim")" \
        "$(for_pgbench "$baseline_complete")" >"$dir/baseline.sql"
    printf '%s\n%s \\gset\n%s;\n' "$next_key" "SELECT token FROM $schema.floor_claim(:key)" \
        "$(for_pgbench "$floor_complete")" >"$dir/floor.sql"
    # Four keys as a text array, the four claims' tokens as another.
    local four="array['bench', 'bench', 'bench', 'bench']"
    printf '%s\n%s \\gset\n%s;\n' \
        "SELECT array['k' || nextval('$schema.keys'), 'k' || nextval('$schema.keys'), 'k' || nextval('$schema.keys'), 'k' || nextval('$schema.keys')]::text AS keys \\gset" \
        "SELECT array_agg(c.token)::text AS tokens FROM ($(render sentinel-postgres/sql/claim_batch.sql "$schema" \
            "$four" ":keys::text[]" "array['w', 'w', 'w', 'w']" \
            "array[30000000, 30000000, 30000000, 30000000]::bigint[]" \
            "array[60000000, 60000000, 60000000, 60000000]::bigint[]" "array[true, true, true, true]" \
            "array_fill('\\x00112233445566778899aabbccddeeff'::bytea, array[4])" "array_fill(NULL::text, array[4])" \
            "NULL::bigint")) AS c" \
        "$(render sentinel-postgres/sql/complete_batch.sql "$schema" "$four" ":keys::text[]" \
            ":tokens::bigint[]" "array_fill('\"ch\"'::text, array[4])" "NULL::bigint")" \
        >"$dir/batch4.sql"
    for_plpgsql() { sed "s/\\\$1/k/g; s/\\\$2/tok/g" <<<"$1"; }
    sentinel "k" "tok"
    local cached_claim=$claim
    cached_claim=${cached_claim//, k, /, \'cached\', }
    cat >"$dir/pairs.sql" <<SQL
-- One iteration of a pair: the claim, a commit, the complete, a commit (a cached read: the read
-- and a commit), on a fresh key k.
CREATE PROCEDURE $schema.pairs(variant text, n int) LANGUAGE plpgsql AS \$proc\$
DECLARE k text; tok bigint; r record;
BEGIN
    FOR i IN 1..n LOOP
        k := 'k' || nextval('$schema.keys');
        IF variant = 'baseline' THEN
            $(for_plpgsql "$baseline_claim") INTO r; tok := r.token; COMMIT;
            $(for_plpgsql "$baseline_complete"); COMMIT;
        ELSIF variant = 'sentinel' THEN
            $claim INTO r; tok := r.token; COMMIT;
            $complete INTO r; COMMIT;
        ELSIF variant = 'floor' THEN
            SELECT s.token FROM $schema.floor_claim(k) AS s INTO r; tok := r.token; COMMIT;
            $(for_plpgsql "$floor_complete"); COMMIT;
        ELSIF variant = 'cached-baseline' THEN
            SELECT b.state, b.result FROM $schema.baseline AS b
             WHERE b.namespace = 'bench' AND b.key = 'cached' INTO r;
            COMMIT;
        ELSIF variant = 'cached-sentinel' THEN
            $cached_claim INTO r; COMMIT;
        END IF;
    END LOOP;
END \$proc\$;
-- The completed key of the cached reads, on each side.
INSERT INTO $schema.baseline VALUES ('bench', 'cached', 'completed', 'w', 1, now(), '"ch"');
DO \$do\$
DECLARE k text := 'cached'; tok bigint; r record;
BEGIN
    $claim INTO r; tok := r.token;
    $complete INTO r;
END \$do\$;
SQL
}

# pgbench: each fresh pair alone, at 1 and 8 clients, in the order baseline, sentinel, floor,
# batch4, batch4, floor, sentinel, baseline (so that a drifting machine slows all alike); the
# ratio is the pair's pairs per second over the baseline's (a batch4 transaction is four pairs).
postgres() {
    local url=${SENTINEL_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
    local seconds=${SENTINEL_BENCH_SECONDS:-15}
    local schema=sentinel_floor_$$
    local dir
    dir=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: the trap runs after these locals are gone
    trap "psql -q '$url' -c 'DROP SCHEMA IF EXISTS $schema CASCADE' >/dev/null 2>&1; rm -rf '$dir'" EXIT
    postgres_setup "$url" "$schema" "$dir"
    echo "pgbench against $(psql -Atq "$url" -c "SELECT version()" | cut -d' ' -f1-2)," \
        "fsync=$(psql -Atq "$url" -c 'SHOW fsync')," \
        "synchronous_commit=$(psql -Atq "$url" -c 'SHOW synchronous_commit');" \
        "${seconds} s per pair and turn, each pair alone"
    local clients pair
    for clients in 1 8; do
        declare -A done_tx=()
        for pair in baseline sentinel floor batch4 batch4 floor sentinel baseline; do
            local n
            n=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$dir/$pair.sql" "$url" \
                | awk '/number of transactions actually processed/ { split($NF, a, "/"); print a[1] }')
            [[ $pair == batch4 ]] && n=$(( 4 * n ))
            done_tx[$pair]=$(( ${done_tx[$pair]:-0} + n ))
        done
        echo "$clients client(s), fresh pairs (claim + complete, commits included):"
        for pair in baseline sentinel floor batch4; do
            awk -v name="$pair" -v n="${done_tx[$pair]}" -v base="${done_tx[baseline]}" \
                -v secs=$((2 * seconds)) \
                'BEGIN { printf "  %-9s %8.1f pairs/s   ratio %.2f\n", name, n / secs, n / base }'
        done
        unset done_tx
    done
}

# Instructions: the pairs run in a scratch cluster by a single-user backend under callgrind,
# which counts the instructions it executes, the same count from run to run whatever else the
# machine is doing. Each side runs 30 warm-up iterations, then SENTINEL_BENCH_ITERATIONS (default
# 300); the count per pair is the difference over the iterations. Commits write WAL without
# waiting for the flush (synchronous_commit=off, fsync=off): this counts CPU work, not I/O.
# Needs valgrind and PostgreSQL's server binaries (pg_config --bindir, else the newest under
# /usr/lib/postgresql); run as root, it runs the server as the user postgres.
postgres_instructions() {
    local iterations=${SENTINEL_BENCH_ITERATIONS:-300}
    local bin
    bin=$(pg_config --bindir 2>/dev/null || true)
    [[ -x "$bin/postgres" ]] || bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [[ -x "$bin/postgres" ]] || { echo "no PostgreSQL server binaries found" >&2; exit 1; }
    command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
    local dir
    dir=$(mktemp -d)
    as_server() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    [[ $(id -u) == 0 ]] && chown postgres "$dir"
    # shellcheck disable=SC2064 # expand now: the trap runs after these locals are gone
    trap "as_server '$bin/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$dir'" EXIT
    as_server "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-k $dir -c listen_addresses= -p 5499" start >/dev/null
    local url="postgresql://postgres@/postgres?host=$dir&port=5499" schema=sentinel_cost
    postgres_setup "$url" "$schema" "$dir"
    psql -q -v ON_ERROR_STOP=1 "$url" -f "$dir/pairs.sql"
    as_server "$bin/pg_ctl" -D "$dir/data" -w stop >/dev/null
    # Instructions of one single-user session that calls the procedure with each count given.
    count() {
        local variant=$1 n
        shift
        for n in "$@"; do echo "CALL $schema.pairs('$variant', $n);"; done >"$dir/in.sql"
        chmod a+r "$dir/in.sql"
        as_server valgrind --tool=callgrind --callgrind-out-file=/dev/null \
            "$bin/postgres" --single -D "$dir/data" -c synchronous_commit=off -c fsync=off \
            postgres <"$dir/in.sql" 2>&1 >/dev/null | awk '/Collected :/ { print $NF }'
    }
    echo "instructions per operation (callgrind, PostgreSQL $("$bin/postgres" -V | awk '{ print $3 }'), $iterations iterations):"
    local variant base
    declare -A per=()
    for variant in baseline sentinel floor cached-baseline cached-sentinel; do
        local warm all
        warm=$(count "$variant" 30)
        all=$(count "$variant" 30 "$iterations")
        per[$variant]=$(( (all - warm) / iterations ))
    done
    for variant in baseline sentinel floor cached-baseline cached-sentinel; do
        base=${per[baseline]}
        [[ $variant == cached-* ]] && base=${per[cached-baseline]}
        awk -v name="$variant" -v n="${per[$variant]}" -v base="$base" \
            'BEGIN { printf "  %-16s %9d   ratio %.2f\n", name, n, base / n }'
    done
}

# Renders a statement of sentinel-postgres/sql/ for pgbench: comments dropped, {notify},
# {schema} and {channel} filled in as src/sql.rs does, $1.. replaced by the given SQL values.
render() {
    local file=$1 schema=$2
    shift 2
    perl -0777 -e '
        my ($file, $schema, @values) = @ARGV;
        local $/;
        open my $rs, "<", "sentinel-postgres/src/sql.rs" or die;
        my ($notify) = <$rs> =~ /const NOTIFY: &str = "(.*?)";/s or die "no NOTIFY in src/sql.rs";
        open my $f, "<", $file or die;
        my $sql = <$f>;
        $sql =~ s/--[^\n]*//g;
        $sql =~ s/\{notify\}/$notify/g;
        $sql =~ s/\{schema\}/"$schema"/g;
        $sql =~ s/\{channel\}/sentinel_floor/g;
        $sql =~ s/\$(\d+)/$values[$1 - 1]/ge;
        $sql =~ s/\s+/ /g;
        $sql =~ s/^ | $//g;
        print $sql;
    ' "$file" "$schema" "$@"
}

redis() {
    local host=${SENTINEL_BENCH_REDIS_HOST:-127.0.0.1} port=${SENTINEL_BENCH_REDIS_PORT:-6379}
    local cli=(redis-cli -h "$host" -p "$port")
    # shellcheck disable=SC2064 # expand now: the trap runs after these locals are gone
    trap "redis-cli -h '$host' -p '$port' FLUSHALL >/dev/null" EXIT
    local set_only hash_only stream_hash claim
    set_only=$("${cli[@]}" SCRIPT LOAD "return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', 30000)")
    hash_only=$("${cli[@]}" SCRIPT LOAD "return redis.call('HSET', KEYS[1], 'state', 'executing', 'owner', ARGV[1])")
    stream_hash=$("${cli[@]}" SCRIPT LOAD "redis.call('XADD', KEYS[2], 'MAXLEN', 100, '*', 'kind', 'claimed')
return redis.call('HSET', KEYS[1], 'state', 'executing', 'owner', ARGV[1])")
    # The claim script as src/scripts.rs assembles it: fast section, helpers, full section.
    claim=$(cat sentinel-redis/lua/fast/claim.lua sentinel-redis/lua/lib.lua sentinel-redis/lua/claim.lua \
        | "${cli[@]}" -x SCRIPT LOAD)
    echo "redis-benchmark against Redis $("${cli[@]}" INFO server | awk -F: '/^redis_version/ { print $2 }' | tr -d '\r'), 8 clients, fresh keys"
    local name
    run() {
        name=$1
        shift
        redis-benchmark -h "$host" -p "$port" -q -n 200000 -c 8 -r 1000000000 "$@" 2>/dev/null \
            | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 \
            | awk -v name="$name" '{ printf "  %-44s %9.0f calls/s\n", name, $1 }'
    }
    run "SET NX PX" SET "b:__rand_int__" v NX PX 30000
    run "script: that SET" EVALSHA "$set_only" 1 "s:__rand_int__" v
    run "script: HSET of the record" EVALSHA "$hash_only" 1 "h:__rand_int__" v
    run "script: XADD to a new stream + HSET" EVALSHA "$stream_hash" 2 "{x:__rand_int__}" "{x:__rand_int__}:h" v
    run "Sentinel's claim script (claim and start)" EVALSHA "$claim" 2 "{c:__rand_int__}" "{c:__rand_int__}:h" \
        "" 100 worker 30000000 60000000 1 00112233445566778899aabbccddeeff ""
}

case "${1:-}" in
    postgres) postgres ;;
    postgres-instructions) postgres_instructions ;;
    redis) redis ;;
    *) echo "usage: $0 postgres|postgres-instructions|redis" >&2; exit 2 ;;
esac
