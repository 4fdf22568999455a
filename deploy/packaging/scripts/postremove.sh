#!/bin/sh
# After the files are gone. Removing the package keeps the session, the CA and
# its key in /var/lib/anaplan-proxy, so that reinstalling carries on; only
# `apt purge` (deb "purge") deletes them. The user stays, so that files it
# owns elsewhere keep a name. (rpm: $1 = 0 on erase, 1 on upgrade.)
set -e
if [ "$1" = purge ]; then
  rm -f /etc/systemd/system/*.wants/anaplan-proxy.service /etc/systemd/system/*.wants/anaplan-proxy@*.service
  rm -rf /var/lib/anaplan-proxy
  rmdir /etc/anaplan-proxy 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
