#!/bin/sh
# Before the files are unpacked: the system user and group that own the state
# and may read /etc/anaplan-proxy. (deb: install/upgrade; rpm: $1 = 1 or 2.)
set -e
if ! getent group anaplan-proxy >/dev/null; then
  groupadd --system anaplan-proxy
fi
if ! getent passwd anaplan-proxy >/dev/null; then
  nologin=/usr/sbin/nologin
  [ -x "$nologin" ] || nologin=/sbin/nologin
  useradd --system --gid anaplan-proxy --home-dir /var/lib/anaplan-proxy --no-create-home \
    --shell "$nologin" --comment "anaplan-proxy daemon" anaplan-proxy
fi
exit 0
