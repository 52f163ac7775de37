#!/usr/bin/env bash
# Starts (or installs, then starts) the local servers the backend test suites need, and exports
# their URLs. Sourced by scripts/test.sh; can be run on its own to start them.
#
# Each backend is found in this order: an URL already in the environment, a server already
# listening on its default local port, a local server binary started here. When none works the
# suite fails (CI) or says SKIPPED loudly (local runs without SENTINEL_REQUIRE_BACKENDS).

ensure_services() {
  # No backend crate exists yet: nothing to start.
  :
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  ensure_services
fi
