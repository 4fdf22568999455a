#!/usr/bin/env bash
# Measures the shared session of several anaplan-proxy instances on one
# PostgreSQL store: how soon a refreshed token reaches the other instances,
# and how soon the survivors serve a new token after an instance dies (see
# bench/ha/main.go for what is measured and how). Everything runs on
# loopback: a throw-away PostgreSQL server, the fake Anaplan, and the
# instances, built from this tree with the failpoints of test builds.
#
# Needs: go, and PostgreSQL's server binaries (Debian: apt-get install
# postgresql; they are found in /usr/lib/postgresql/*/bin).
#
# Settings (environment):
#   BENCH_HA_INSTANCES=3     serve processes
#   BENCH_HA_LIFETIME=2s     access-token lifetime of the fake Anaplan
#   BENCH_HA_LEASE=500ms     store.lease
#   BENCH_HA_REFRESHES=50    refreshes whose handover is measured
#   BENCH_HA_KILLS=10        deaths measured, of each kind
#   BENCH_HA_KEEP=0          1: keep the work directory (configurations, logs)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v go >/dev/null || { echo "bench/ha.sh: go is missing" >&2; exit 1; }

bin=$(mktemp -d "${TMPDIR:-/tmp}/anaplan-proxy-bench-ha-bin.XXXXXX")
trap 'rm -rf "$bin"' EXIT
(cd "$repo" && go build -tags failpoints -o "$bin/anaplan-proxy" ./cmd/anaplan-proxy)
(cd "$repo" && go build -o "$bin/ha" ./bench/ha)

keep=()
[[ ${BENCH_HA_KEEP:-0} == 1 ]] && keep=(-keep)
"$bin/ha" -bin "$bin/anaplan-proxy" \
	-instances "${BENCH_HA_INSTANCES:-3}" \
	-lifetime "${BENCH_HA_LIFETIME:-2s}" \
	-lease "${BENCH_HA_LEASE:-500ms}" \
	-refreshes "${BENCH_HA_REFRESHES:-50}" \
	-kills "${BENCH_HA_KILLS:-10}" \
	"${keep[@]}"
