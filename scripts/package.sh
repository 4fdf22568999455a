#!/usr/bin/env bash
# Builds the .deb and .rpm packages into dist/ (or $1) from
# deploy/packaging/nfpm.yaml: the static binary, the systemd units pointed at
# /usr/bin, and /etc/anaplan-proxy/config.yaml. The version is the git tag
# (git describe: v1.2.3 → 1.2.3, three commits later → 1.2.3+3.gabc1234),
# or 0.0.0-dev without one. nfpm is built from tools/nfpm/go.mod, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

describe="$(git describe --tags --match 'v[0-9]*' 2>/dev/null || true)"
if [[ "$describe" =~ ^v([0-9]+\.[0-9]+\.[0-9]+)(-([0-9A-Za-z.]+))?(-([0-9]+)-g([0-9a-f]+))?$ ]]; then
  version="${BASH_REMATCH[1]}"
  [ -n "${BASH_REMATCH[3]}" ] && version+="-${BASH_REMATCH[3]}"
  [ -n "${BASH_REMATCH[5]}" ] && version+="+${BASH_REMATCH[5]}.g${BASH_REMATCH[6]}"
else
  version="0.0.0-dev"
fi
arch="$(go env GOARCH)"

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${version}" -o "$build/anaplan-proxy" ./cmd/anaplan-proxy
for unit in anaplan-proxy.service anaplan-proxy@.service; do
  sed 's|/usr/local/bin/anaplan-proxy|/usr/bin/anaplan-proxy|g' "deploy/systemd/$unit" > "$build/$unit"
done
nfpm="$build/nfpm"
(cd tools/nfpm && go build -o "$nfpm" github.com/goreleaser/nfpm/v2/cmd/nfpm)

for packager in deb rpm; do
  VERSION="$version" ARCH="$arch" BUILD_DIR="$build" \
    "$nfpm" package --config deploy/packaging/nfpm.yaml --packager "$packager" --target "$out/" >/dev/null
done
ls -l "$out"
