#!/usr/bin/env bash
# How close can a fresh once() get to the raw baselines of the benchmarks, before any Rust runs?
# Measures the server side alone, with the servers' own C load generators (pgbench,
# redis-benchmark), so the numbers carry none of the Rust client's CPU:
#
#   ./scripts/bench-floors.sh postgres   # pgbench: three statement pairs, interleaved
#   ./scripts/bench-floors.sh redis      # redis-benchmark: four single commands
#
# PostgreSQL (SENTINEL_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres),
# in a scratch schema that is dropped afterwards, with every migration of sentinel-postgres:
#   baseline  the raw pair of benches/once.rs: INSERT … ON CONFLICT DO NOTHING, then UPDATE;
#   sentinel  Sentinel's own claim (sql/claim.sql) and complete (sql/complete.sql) statements;
#   floor     the least one statement per transition can do under DESIGN §7: a PL/pgSQL function
#             inserting the record and its event, then an UPDATE and its event in one statement.
# Each pair is timed per statement (pgbench -r) at 1 and 8 clients; the ratio is the baseline's
# time over the pair's. The key of each pair comes from a sequence, by a statement left out of the
# sums.
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

postgres() {
    local url=${SENTINEL_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
    local seconds=${SENTINEL_BENCH_SECONDS:-15}
    local schema=sentinel_floor_$$
    local dir
    dir=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: the trap runs after these locals are gone
    trap "psql -q '$url' -c 'DROP SCHEMA IF EXISTS $schema CASCADE' >/dev/null 2>&1; rm -rf '$dir'" EXIT
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
    local next_key="SELECT 'k' || nextval('$schema.keys') AS key \\gset"
    # Sentinel's statements, rendered as the store renders them (src/sql.rs), with the
    # parameters of a fresh claim-and-start and of its completion.
    local claim complete
    claim=$(render sentinel-postgres/sql/claim.sql "$schema" \
        "'bench'" ":key" "NULL::bigint" "'w'" "30000000" "60000000" "true" \
        "'\\x00112233445566778899aabbccddeeff'::bytea" "NULL::text")
    complete=$(render sentinel-postgres/sql/complete.sql "$schema" \
        "'bench'" ":key" "NULL::bigint" ":token" "'\"ch\"'")
    printf '%s\n%s \\gset\n%s;\n' "$next_key" "$claim" "$complete" >"$dir/sentinel.sql"
    cat >"$dir/baseline.sql" <<SQL
$next_key
INSERT INTO $schema.baseline (namespace, key, state, owner, token, lease_expires_at) VALUES ('bench', :key, 'executing', 'w', 1, clock_timestamp() + interval '30 seconds') ON CONFLICT (namespace, key) DO NOTHING RETURNING token \\gset
UPDATE $schema.baseline SET state = 'completed', result = '"ch"'::json WHERE namespace = 'bench' AND key = :key AND token = :token;
SQL
    cat >"$dir/floor.sql" <<SQL
$next_key
SELECT token FROM $schema.floor_claim(:key) \\gset
WITH done AS (UPDATE $schema.executions AS e SET state = 'completed', result = '"ch"'::json, updated_at = clock_timestamp(), version = e.version + 1 WHERE e.namespace = 'bench' AND e.key = :key AND e.token = :token AND e.state = 'executing' RETURNING e.owner, e.updated_at) INSERT INTO $schema.events (keyspace, namespace, key, kind, token, owner, state, at) SELECT 'execution', 'bench', :key, 'completed', :token, d.owner, 'completed', d.updated_at FROM done AS d;
SQL
    echo "pgbench against $(psql -Atq "$url" -c "SELECT version()" | cut -d' ' -f1-2)," \
        "fsync=$(psql -Atq "$url" -c 'SHOW fsync')," \
        "synchronous_commit=$(psql -Atq "$url" -c 'SHOW synchronous_commit'); ${seconds} s per run"
    local clients
    for clients in 1 8; do
        pgbench -n -M prepared -r -c "$clients" -j 2 -T "$seconds" \
            -f "$dir/baseline.sql@1" -f "$dir/sentinel.sql@1" -f "$dir/floor.sql@1" "$url" \
            | awk -v clients="$clients" '
                /^SQL script [0-9]+:/ { name = $4; sub(/.*\//, "", name); sub(/\.sql$/, "", name) }
                # Statement lines: latency (ms), failures, the statement. The key is not summed.
                /^ +[0-9]+\.[0-9]+ +[0-9]+ / && name != "" && $0 !~ /nextval/ { ms[name] += $1 }
                END {
                    printf "%d client(s), ms per fresh pair (claim + complete, commits included):\n", clients
                    split("baseline sentinel floor", order, " ")
                    for (i = 1; i <= 3; i++) {
                        n = order[i]
                        printf "  %-9s %7.3f ms   ratio %.2f\n", n, ms[n], ms["baseline"] / ms[n]
                    }
                }'
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
    redis) redis ;;
    *) echo "usage: $0 postgres|redis" >&2; exit 2 ;;
esac
