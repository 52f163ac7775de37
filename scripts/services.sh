#!/usr/bin/env bash
# shellcheck disable=SC2012  # version directory names are plain numbers
# Starts (or installs, then starts) the local servers the backend test suites need, and exports
# their URLs. Sourced by scripts/test.sh; can be run on its own to start them.
#
#   PostgreSQL  SENTINEL_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
#   Redis       SENTINEL_TEST_REDIS_URL=redis://127.0.0.1:6379
#
# For each backend: an URL already in the environment is kept if it answers; otherwise the
# server is installed with apt-get when its binaries are missing, the system server on its
# default loopback port is started when it is not answering, and its URL is exported once it
# answers. The Redis cluster is not started here: the test fixtures
# (sentinel_testkit::servers) start one from redis-server/redis-cli, which this makes sure exist.
#
# When a backend cannot be brought up: with SENTINEL_REQUIRE_BACKENDS=1 (CI) ensure_services
# fails; otherwise it warns loudly, and the fixtures try local binaries themselves or the suites
# report SKIPPED. Idempotent, and quick when everything already runs.

_svc_pg_url="postgres://postgres@127.0.0.1:5432/postgres"
_svc_redis_url="redis://127.0.0.1:6379"

_svc_say() { printf 'services: %s\n' "$*" >&2; }

_svc_warn() {
  printf '\n!!! WARNING (services): %s\n!!! The suites that need it will try local binaries, or say SKIPPED.\n\n' "$*" >&2
}

_svc_required() {
  case "${SENTINEL_REQUIRE_BACKENDS:-}" in
    1 | true | TRUE | yes | on) return 0 ;;
    *) return 1 ;;
  esac
}

# Runs a command as root: directly when we are root, else through passwordless sudo.
_svc_as_root() {
  if [[ "$(id -u)" == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    _svc_say "cannot run as root (not root, no passwordless sudo): $*"
    return 1
  fi
}

# apt-get install, non-interactive; refreshes the package lists first when the install fails.
_svc_apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    _svc_say "apt-get not found: cannot install $*"
    return 1
  fi
  _svc_say "installing $* with apt-get"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  _svc_as_root "${apt[@]}" install --no-install-recommends "$@" >/dev/null ||
    { _svc_as_root "${apt[@]}" update >/dev/null && _svc_as_root "${apt[@]}" install --no-install-recommends "$@" >/dev/null; }
}

# Runs a probe with a time limit when `timeout` exists.
_svc_limit() {
  if command -v timeout >/dev/null 2>&1; then
    timeout "$@"
  else
    shift
    "$@"
  fi
}

# --- PostgreSQL -----------------------------------------------------------------------------

_svc_pg_bin_dir() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Whether the PostgreSQL at $1 accepts `select 1` (psql), or at least says it is ready.
_svc_pg_answers() {
  local url=$1
  if command -v psql >/dev/null 2>&1; then
    [[ "$(PGCONNECT_TIMEOUT=5 _svc_limit 15 psql "$url" -XAtc 'select 1' 2>/dev/null)" == 1 ]]
  else
    _svc_limit 15 pg_isready -q -d "$url" -t 5 >/dev/null 2>&1
  fi
}

_svc_pg_ready_on_5432() {
  _svc_limit 10 pg_isready -q -h 127.0.0.1 -p 5432 -t 5 >/dev/null 2>&1
}

# Starts the system cluster on port 5432 (Debian's pg_ctlcluster), creating one if none exists.
_svc_pg_start_system() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    _svc_say "pg_ctlcluster not found: cannot start a system PostgreSQL cluster"
    return 1
  fi
  local ver name
  read -r ver name < <(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }') || true
  if [[ -z "${ver:-}" ]]; then
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [[ -z "$ver" ]]; then
      ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    fi
    [[ -n "$ver" ]] || { _svc_say "no PostgreSQL version found"; return 1; }
    name=main
    if [[ ! -d "/etc/postgresql/$ver/$name" ]]; then
      _svc_say "creating the PostgreSQL $ver cluster '$name' on port 5432"
      _svc_as_root pg_createcluster -p 5432 "$ver" "$name" >/dev/null || return 1
    fi
  fi
  _svc_say "starting the PostgreSQL $ver/$name cluster"
  _svc_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || true
  local i
  for ((i = 0; i < 30; i++)); do
    _svc_pg_ready_on_5432 && return 0
    sleep 0.5
  done
  _svc_say "PostgreSQL $ver/$name did not become ready on 127.0.0.1:5432"
  return 1
}

# The tests connect as `postgres` over TCP without a password. A fresh Debian cluster asks for
# one on 127.0.0.1: let the loopback in with trust, as on the project's machines.
_svc_pg_trust_loopback() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  local ver name hba
  read -r ver name < <(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }') || true
  hba="/etc/postgresql/${ver:-none}/${name:-none}/pg_hba.conf"
  [[ -f "$hba" ]] || return 1
  if grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    return 1
  fi
  _svc_say "allowing password-less (trust) connections from 127.0.0.1 in $hba"
  _svc_as_root sed -i '1i host all all 127.0.0.1/32 trust  # sentinel test suites' "$hba" &&
    _svc_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
}

_svc_ensure_postgres() {
  if [[ -n "${SENTINEL_TEST_POSTGRES_URL:-}" ]]; then
    if _svc_pg_answers "$SENTINEL_TEST_POSTGRES_URL"; then
      _svc_say "postgres: using SENTINEL_TEST_POSTGRES_URL from the environment"
      return 0
    fi
    _svc_say "postgres: SENTINEL_TEST_POSTGRES_URL=$SENTINEL_TEST_POSTGRES_URL does not answer; trying the local server"
    unset SENTINEL_TEST_POSTGRES_URL
  fi
  if ! _svc_pg_bin_dir >/dev/null || ! command -v pg_isready >/dev/null 2>&1; then
    _svc_apt_install postgresql || true
  fi
  if ! _svc_pg_bin_dir >/dev/null; then
    _svc_fail "postgres: initdb/pg_ctl/postgres are not installed and could not be installed"
    return
  fi
  if ! _svc_pg_ready_on_5432; then
    _svc_pg_start_system || true
  fi
  if ! _svc_pg_answers "$_svc_pg_url"; then
    if _svc_pg_ready_on_5432 && _svc_pg_trust_loopback; then
      sleep 0.5
    fi
  fi
  if _svc_pg_answers "$_svc_pg_url"; then
    export SENTINEL_TEST_POSTGRES_URL="$_svc_pg_url"
    _svc_say "postgres: $SENTINEL_TEST_POSTGRES_URL answers"
  else
    _svc_fail "postgres: nothing answers 'select 1' at $_svc_pg_url"
  fi
}

# --- Redis ----------------------------------------------------------------------------------

_svc_redis_answers() {
  [[ "$(_svc_limit 10 redis-cli -u "$1" ping 2>/dev/null)" == PONG ]]
}

_svc_ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    _svc_apt_install redis-server redis-tools || true
  fi
  if ! command -v redis-cli >/dev/null 2>&1; then
    _svc_fail "redis: redis-cli is not installed and could not be installed (the cluster fixtures need it)"
    return
  fi
  if [[ -n "${SENTINEL_TEST_REDIS_URL:-}" ]]; then
    if _svc_redis_answers "$SENTINEL_TEST_REDIS_URL"; then
      _svc_say "redis: using SENTINEL_TEST_REDIS_URL from the environment"
      return 0
    fi
    _svc_say "redis: SENTINEL_TEST_REDIS_URL=$SENTINEL_TEST_REDIS_URL does not answer; trying the local server"
    unset SENTINEL_TEST_REDIS_URL
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    _svc_fail "redis: redis-server is not installed and could not be installed"
    return
  fi
  if ! _svc_redis_answers "$_svc_redis_url"; then
    _svc_say "redis: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/sentinel-redis-6379.log >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 40; i++)); do
      _svc_redis_answers "$_svc_redis_url" && break
      sleep 0.25
    done
  fi
  if _svc_redis_answers "$_svc_redis_url"; then
    export SENTINEL_TEST_REDIS_URL="$_svc_redis_url"
    _svc_say "redis: $SENTINEL_TEST_REDIS_URL answers"
  else
    _svc_fail "redis: nothing answers PING at $_svc_redis_url (see /tmp/sentinel-redis-6379.log)"
  fi
}

# --- Entry point ----------------------------------------------------------------------------

_svc_failures=0

_svc_fail() {
  if _svc_required; then
    printf '\nERROR (services): %s\n' "$*" >&2
    _svc_failures=$((_svc_failures + 1))
  else
    _svc_warn "$*"
  fi
}

# Makes sure PostgreSQL and Redis run on their loopback ports and exports their URLs. Returns
# non-zero when one cannot be brought up and SENTINEL_REQUIRE_BACKENDS=1.
ensure_services() {
  _svc_failures=0
  _svc_ensure_postgres
  _svc_ensure_redis
  # The CLI's TLS tests make their certificates with openssl.
  if ! command -v openssl >/dev/null 2>&1; then
    _svc_apt_install openssl || true
    command -v openssl >/dev/null 2>&1 || _svc_fail "openssl is not installed and could not be installed (tests/tls.rs needs it)"
  fi
  if ((_svc_failures > 0)); then
    printf 'ERROR (services): SENTINEL_REQUIRE_BACKENDS=1 and %d backend(s) could not be brought up\n' \
      "$_svc_failures" >&2
    return 1
  fi
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  ensure_services
fi
