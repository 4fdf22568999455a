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
