# bench/lib.sh: what the benchmark scripts share. A script sets `name` (the
# prefix of its messages), `repo` and BENCH_KEEP, then sources this file,
# which makes the work directory ($work), the list of processes to stop
# ($pids), the clean-up on exit, and the helpers below.

say() { printf '%s\n' "$*" >&2; }
die() { say "$name: $*"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/anaplan-proxy-$name.XXXXXX")
pids=()
cleanup() {
	local pid
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		pid=${pids[i]}
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ $BENCH_KEEP == 1 ]]; then
		say "$name: work directory kept: $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_until() {
	local what=$1 limit=$2
	shift 2
	local deadline=$((SECONDS + limit))
	until "$@"; do
		((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what (logs in $work; BENCH_KEEP=1 keeps them)"
		sleep 0.05
	done
}
alive() { kill -0 "$1" 2>/dev/null; }

# busy says, when the machine was not idle at the start, that the figures
# will be noisy.
read -r load1 _ </proc/loadavg
busy=""
if awk -v l="$load1" 'BEGIN{exit !(l > 0.5)}'; then
	busy="The machine was busy when the run started (load average $load1): expect noisy figures."
	say "$name: $busy"
fi

# start_session INJECT_HOSTS ALLOW_PRIVATE: starts the fake Anaplan with a
# proxy config for the hosts (comma separated), sets config, proxy_addr,
# admin_addr and state_dir from what it prints, and logs in to it (the fake
# approves by itself). Needs $bin/session and $bin/anaplan-proxy.
start_session() {
	"$bin/session" -dir "$work/session" -inject-hosts "$1" -upstream-ca "$work/upstream-ca.pem" \
		-allow-private="$2" >"$work/session.out" 2>"$work/session.log" &
	pids+=($!)
	wait_until "the fake Anaplan" 10 grep -q '^state_dir=' "$work/session.out"
	config=$(sed -n 's/^config=//p' "$work/session.out")
	proxy_addr=$(sed -n 's/^proxy_listen=//p' "$work/session.out")
	admin_addr=$(sed -n 's/^admin_listen=//p' "$work/session.out")
	state_dir=$(sed -n 's/^state_dir=//p' "$work/session.out")
	say "$name: anaplan-proxy login (the fake approves by itself)"
	timeout 60 "$bin/anaplan-proxy" login --config "$config" >"$work/login.log" 2>&1 ||
		die "anaplan-proxy login failed: $(tail -n 5 "$work/login.log")"
}
