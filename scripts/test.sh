#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
#
#   ./scripts/test.sh
#
# Backend suites talk to real servers; this script makes sure they are up first (see
# scripts/services.sh). With SENTINEL_REQUIRE_BACKENDS=1 (CI sets it) a backend that cannot be
# reached fails the run instead of being reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "services"
# shellcheck source=scripts/services.sh
source scripts/services.sh
ensure_services

# The suites put every key they write to the shared Redis under sentinel-test/<run>/ (see
# sentinel_testkit::servers::redis_test_prefix): remove them when the run ends, pass or fail, so
# runs do not pile up on a server that outlives them.
export SENTINEL_TEST_RUN="${SENTINEL_TEST_RUN:-run$$}"
remove_test_keys() {
  [[ -n "${SENTINEL_TEST_REDIS_URL:-}" ]] || return 0
  # On the server, not through a pipe: key names hold any byte the tests use, newlines included.
  redis-cli -u "$SENTINEL_TEST_REDIS_URL" EVAL "
    local cursor, removed = '0', 0
    repeat
      local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
      cursor = page[1]
      for _, key in ipairs(page[2]) do
        redis.call('UNLINK', key)
        removed = removed + 1
      end
    until cursor == '0'
    return removed" 0 "sentinel-test/$SENTINEL_TEST_RUN/*" >/dev/null || true
}
trap remove_test_keys EXIT

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (warnings are errors: broken links, private links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo test"
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
cargo test --workspace --all-targets
cargo test --workspace --doc

step "demos"
cargo run --quiet --example payments >/dev/null
for backend in postgres redis; do
  var="SENTINEL_TEST_$(echo "$backend" | tr '[:lower:]' '[:upper:]')_URL"
  if [[ -n "${!var:-}" ]]; then
    cargo run --quiet --example payments -- "--$backend" "${!var}" >/dev/null
  elif [[ "${SENTINEL_REQUIRE_BACKENDS:-}" == 1 ]]; then
    echo "the $backend demo needs $var" >&2
    exit 1
  else
    echo "SKIPPED: the $backend demo ($var is not set)" >&2
  fi
done
cargo run --quiet --example metrics >/dev/null

echo
echo "all checks passed"
