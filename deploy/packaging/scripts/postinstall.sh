#!/bin/sh
# After the files are in place: the state directory, and systemd told about
# the units. A first install starts nothing: the service is enabled by the
# administrator after `login`. An upgrade restarts the instances that run.
# (deb: "configure" [old version]; rpm: $1 = 1 on install, 2 on upgrade.)
set -e
install -d -m 0700 -o anaplan-proxy -g anaplan-proxy /var/lib/anaplan-proxy
upgrade=
case "$1" in
  configure) [ -n "$2" ] && upgrade=1 ;;
  2) upgrade=1 ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ -n "$upgrade" ]; then
    systemctl try-restart anaplan-proxy.service 'anaplan-proxy@*.service' || true
  fi
fi
if [ -z "$upgrade" ]; then
  cat <<'MSG'
anaplan-proxy is installed but not started. Next:
  1. set oauth.client_id in /etc/anaplan-proxy/config.yaml
  2. sudo -u anaplan-proxy anaplan-proxy login
  3. sudo systemctl enable --now anaplan-proxy
MSG
fi
exit 0
