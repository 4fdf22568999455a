#!/bin/sh
# Before the files go: stop every instance when the package is removed, not
# when it is upgraded. Whether they are enabled is kept until purge. (deb: "remove" or "upgrade"; rpm: $1 = 0
# on erase, 1 on upgrade.)
set -e
case "$1" in
  remove|0)
    if [ -d /run/systemd/system ]; then
      systemctl stop anaplan-proxy.service 'anaplan-proxy@*.service' || true
    fi
    ;;
esac
exit 0
