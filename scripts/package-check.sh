#!/usr/bin/env bash
# Builds the .deb and .rpm (scripts/package.sh), installs the .deb on this
# machine with dpkg, checks what it installed, removes it (the state stays)
# and purges it (the state goes); then checks the .rpm's files and scripts.
# Needs root, dpkg and rpm. Leaves the machine as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-check: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root: it installs the .deb"
command -v dpkg >/dev/null || fail "dpkg is not installed"
command -v rpm >/dev/null || fail "rpm is not installed (Debian package rpm)"
if dpkg -s anaplan-proxy >/dev/null 2>&1; then
  fail "anaplan-proxy is already installed here; this check would replace it"
fi

dist="$(mktemp -d)"
cleanup() {
  dpkg --purge anaplan-proxy >/dev/null 2>&1 || true
  rm -rf "$dist"
}
trap cleanup EXIT
scripts/package.sh "$dist" >/dev/null
deb="$(ls "$dist"/*.deb)"
rpm="$(ls "$dist"/*.rpm)"
echo "built $(basename "$deb") and $(basename "$rpm")"

# mode owner group path
check_file() {
  local want="$1 $2 $3" got
  got="$(stat -c '%a %U %G' "$4")" || fail "$4 is missing"
  [ "$got" = "$want" ] || fail "$4: mode/owner/group $got, want $want"
}

# --- .deb: install ---
dpkg -i "$deb" >/dev/null
getent passwd anaplan-proxy >/dev/null || fail "no anaplan-proxy user after install"
shell="$(getent passwd anaplan-proxy | cut -d: -f7)"
case "$shell" in */nologin) ;; *) fail "the anaplan-proxy user's shell is $shell, want nologin" ;; esac
[ "$(id -u anaplan-proxy)" -lt 1000 ] || fail "anaplan-proxy is not a system user (uid $(id -u anaplan-proxy))"
check_file 755 root root /usr/bin/anaplan-proxy
check_file 644 root root /usr/lib/systemd/system/anaplan-proxy.service
check_file 644 root root /usr/lib/systemd/system/anaplan-proxy@.service
check_file 750 root anaplan-proxy /etc/anaplan-proxy
check_file 640 root anaplan-proxy /etc/anaplan-proxy/config.yaml
check_file 700 anaplan-proxy anaplan-proxy /var/lib/anaplan-proxy
grep -qx /etc/anaplan-proxy/config.yaml /var/lib/dpkg/info/anaplan-proxy.conffiles || fail "config.yaml is not a conffile"
file /usr/bin/anaplan-proxy 2>/dev/null | grep -q 'statically linked' || ldd /usr/bin/anaplan-proxy 2>&1 | grep -q 'not a dynamic' || fail "/usr/bin/anaplan-proxy is not static"
grep -q '^ExecStart=/usr/bin/anaplan-proxy serve$' /usr/lib/systemd/system/anaplan-proxy.service || fail "the unit does not run /usr/bin/anaplan-proxy"
if command -v systemd-analyze >/dev/null; then
  units="$(mktemp -d)"
  cp /usr/lib/systemd/system/anaplan-proxy.service "$units/"
  cp /usr/lib/systemd/system/anaplan-proxy@.service "$units/anaplan-proxy@pkg.service"
  out="$(systemd-analyze verify "$units/anaplan-proxy.service" "$units/anaplan-proxy@pkg.service" 2>&1)" || true
  rm -rf "$units"
  [ -z "$out" ] || fail "systemd-analyze verify on the installed units: $out"
fi
/usr/bin/anaplan-proxy version | grep -q '^anaplan-proxy ' || fail "anaplan-proxy version printed nothing"
echo "installed: $(/usr/bin/anaplan-proxy version)"
if /usr/bin/anaplan-proxy help | grep -q "^  doctor "; then
  # No client ID and no session yet: doctor fails and says what to do. It
  # stays on this machine: no DNS or TLS to Anaplan.
  set +e
  out="$(runuser -u anaplan-proxy -- /usr/bin/anaplan-proxy doctor --skip-network --config /etc/anaplan-proxy/config.yaml 2>&1)"
  code=$?
  set -e
  [ "$code" != 0 ] || fail "doctor passed on a fresh install:
$out"
  grep -q '^FAIL session .*no session yet' <<<"$out" && grep -q 'fix: run: anaplan-proxy login --config /etc/anaplan-proxy/config.yaml' <<<"$out" ||
    fail "doctor does not say to log in:
$out"
  echo "doctor on a fresh install (exit $code):"
  sed 's/^/  /' <<<"$out"
else
  echo "anaplan-proxy doctor is not built: skipped"
fi

# An upgrade keeps the administrator's config.
echo "# edited by the administrator" >> /etc/anaplan-proxy/config.yaml
dpkg -i "$deb" >/dev/null
grep -q 'edited by the administrator' /etc/anaplan-proxy/config.yaml || fail "reinstalling replaced the edited config.yaml"

# --- .deb: remove keeps the state, purge deletes it ---
echo "session" > /var/lib/anaplan-proxy/session.json
chown anaplan-proxy:anaplan-proxy /var/lib/anaplan-proxy/session.json
dpkg --remove anaplan-proxy >/dev/null
[ ! -e /usr/bin/anaplan-proxy ] || fail "remove left /usr/bin/anaplan-proxy"
[ -f /var/lib/anaplan-proxy/session.json ] || fail "remove deleted the state in /var/lib/anaplan-proxy"
dpkg --purge anaplan-proxy >/dev/null
[ ! -e /var/lib/anaplan-proxy ] || fail "purge left /var/lib/anaplan-proxy"
[ ! -e /etc/anaplan-proxy ] || fail "purge left /etc/anaplan-proxy"
echo "deb: install, upgrade, remove (state kept) and purge (state deleted) checked"

# --- .rpm: the same files and scripts ---
list="$(rpm -qlp --dump "$rpm" 2>/dev/null)"
# --dump: path size mtime digest mode owner group isconfig isdoc rdev symlink
rpm_check() {
  local path="$1" mode="$2" owner="$3" group="$4" config="$5" line
  line="$(awk -v p="$path" '$1 == p' <<<"$list")"
  [ -n "$line" ] || fail "the .rpm lacks $path"
  read -r _ _ _ _ m o g c _ <<<"$line"
  [ "${m: -4}" = "$mode" ] && [ "$o" = "$owner" ] && [ "$g" = "$group" ] && [ "$c" = "$config" ] ||
    fail "the .rpm has $path as mode ${m: -4} $o:$g config $c, want $mode $owner:$group config $config"
}
rpm_check /usr/bin/anaplan-proxy 0755 root root 0
rpm_check /usr/lib/systemd/system/anaplan-proxy.service 0644 root root 0
rpm_check /usr/lib/systemd/system/anaplan-proxy@.service 0644 root root 0
rpm_check /etc/anaplan-proxy/config.yaml 0640 root anaplan-proxy 1
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null | grep -q '^cn /etc/anaplan-proxy/config.yaml$' ||
  fail "the .rpm's config.yaml is not %config(noreplace)"
scripts="$(rpm -qp --scripts "$rpm" 2>/dev/null)"
for want in 'preinstall scriptlet' 'useradd --system' 'postinstall scriptlet' 'install -d -m 0700 -o anaplan-proxy' \
  'preuninstall scriptlet' 'systemctl stop' 'postuninstall scriptlet'; do
  grep -q -- "$want" <<<"$scripts" || fail "the .rpm's scripts lack \"$want\""
done
echo "rpm: files, modes, config(noreplace) and scripts checked"
echo "package-check: passed"
