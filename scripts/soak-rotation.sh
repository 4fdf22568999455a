#!/usr/bin/env bash
# Rotation soak: the real binary against the fake Anaplan with 1-second
# access tokens and rotating refresh tokens, under light load, until the
# fake has rotated the refresh token ROTATIONS times (default 600, about
# five minutes). It fails on the first refresh token presented twice, on a
# failed request, or when the session is lost; the last line reports the
# figure. Not part of CI: run it by hand after changing auth/.
#
#   scripts/soak-rotation.sh            # 600 rotations
#   ROTATIONS=3000 scripts/soak-rotation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rotations="${ROTATIONS:-600}"
# Two seconds per rotation at worst, plus start-up.
timeout_s=$(( rotations * 2 + 300 ))
ANAPLAN_PROXY_SOAK=1 ANAPLAN_PROXY_SOAK_ROTATIONS="$rotations" \
  go test -count=1 -timeout "${timeout_s}s" -run '^TestSoakRotation$' -v ./cmd/anaplan-proxy/ |
  grep -v '^ *{' 
