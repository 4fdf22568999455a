#!/usr/bin/env bash
# Measures anaplan-proxy against going direct and against a bare TLS relay
# (the ceiling for any TLS-intercepting proxy), interleaved in one run on
# loopback, and prints a Markdown table of the figures and their ratios. The
# table is also written to bench/results/latest.md, the raw figures to
# bench/results/latest.tsv.
#
# What runs: bench/upstream (an HTTPS server with its own CA), bench/relay
# (CONNECT, TLS termination with a cached leaf, verified TLS upstream, byte
# copy), the fake Anaplan of internal/anaplantest (through bench/session) to
# give the real `anaplan-proxy serve` a session, bench/load (small GETs and
# CONNECT timing; a keep-alive load generator that verifies the proxy's
# certificates against its CA, for which hey has no option) and curl (bulk
# transfers).
#
# Needs: go, curl (Debian: apt-get install curl). Optional: perf (Debian:
# apt-get install linux-perf) for BENCH_PROFILE=1.
#
# Settings (environment):
#   BENCH_ROUNDS=3                  rounds; each figure is the median over them
#   BENCH_C1_N=10000                measured requests at concurrency 1
#   BENCH_C50_N=50000               measured requests at concurrency BENCH_C50
#   BENCH_C50=50                    the high concurrency
#   BENCH_DOWNLOAD_BYTES=1073741824 size of the download (1 GiB)
#   BENCH_UPLOAD_BYTES=268435456    size of the upload (256 MiB)
#   BENCH_IDLE_N=1000               idle client connections held for the memory figure (0: not measured)
#   BENCH_UPSTREAM_H2=1             the upstream offers HTTP/2 (clients always speak HTTP/1.1)
#   BENCH_MODES="direct relay proxy" which modes to measure; "direct relay" works without the proxy
#   BENCH_PROXY_BIN=                an anaplan-proxy binary to measure instead of building ./cmd/anaplan-proxy
#   BENCH_PROFILE=0                 1: after the rounds, profile the proxy with perf under c=BENCH_C50 load
#   BENCH_PROFILE_MODE=proxy        the mode to profile: proxy, or relay to compare with
#   BENCH_KEEP=0                    1: keep the work directory (logs, configs) for inspection
#   BENCH_WAN=0                     1: then run bench/wan.sh, the WAN view (a round trip between proxy and
#                                   upstream; per-call and keep-alive; Squid ssl-bump too when installed);
#                                   its own settings are in its header
set -euo pipefail

BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_C1_N=${BENCH_C1_N:-10000}
BENCH_C50_N=${BENCH_C50_N:-50000}
BENCH_C50=${BENCH_C50:-50}
BENCH_DOWNLOAD_BYTES=${BENCH_DOWNLOAD_BYTES:-1073741824}
BENCH_UPLOAD_BYTES=${BENCH_UPLOAD_BYTES:-268435456}
BENCH_UPSTREAM_H2=${BENCH_UPSTREAM_H2:-1}
BENCH_IDLE_N=${BENCH_IDLE_N:-1000}
BENCH_MODES=${BENCH_MODES:-direct relay proxy}
BENCH_PROFILE=${BENCH_PROFILE:-0}
BENCH_PROFILE_MODE=${BENCH_PROFILE_MODE:-proxy}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_PROXY_BIN=${BENCH_PROXY_BIN:-}
BENCH_WAN=${BENCH_WAN:-0}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
results="$repo/bench/results"

name=bench
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

missing=0
command -v go >/dev/null || { say "bench: go is missing (https://go.dev/dl/ or apt-get install golang-go)"; missing=1; }
command -v curl >/dev/null || { say "bench: curl is missing (apt-get install curl)"; missing=1; }
[[ $missing == 0 ]] || exit 1
if [[ $BENCH_PROFILE == 1 ]] && ! command -v perf >/dev/null; then
	die "BENCH_PROFILE=1 needs perf (Debian: apt-get install linux-perf)"
fi
for m in $BENCH_MODES; do
	case $m in direct | relay | proxy) ;; *) die "BENCH_MODES: unknown mode $m (want direct, relay, proxy)" ;; esac
done
want() { [[ " $BENCH_MODES " == *" $1 "* ]]; }
case $BENCH_PROFILE_MODE in proxy | relay) ;; *) die "BENCH_PROFILE_MODE: unknown mode $BENCH_PROFILE_MODE (want proxy or relay)" ;; esac

# --- build -------------------------------------------------------------------
bin="$work/bin"
mkdir -p "$bin"
say "bench: building"
(cd "$repo" && go build -o "$bin/" ./bench/upstream ./bench/relay ./bench/load ./bench/session ./bench/report)
if want proxy; then
	if [[ -n $BENCH_PROXY_BIN ]]; then
		cp "$BENCH_PROXY_BIN" "$bin/anaplan-proxy" || die "BENCH_PROXY_BIN: cannot copy $BENCH_PROXY_BIN"
	else
		(cd "$repo" && go build -o "$bin/anaplan-proxy" ./cmd/anaplan-proxy) ||
			die "./cmd/anaplan-proxy does not build; BENCH_MODES=\"direct relay\" measures without it"
	fi
fi

# --- start the upstream, the relay and the proxy -----------------------------
h2=true
[[ $BENCH_UPSTREAM_H2 == 1 ]] || h2=false
"$bin/upstream" -ca-out "$work/upstream-ca.pem" -addr-out "$work/upstream.addr" -h2="$h2" 2>"$work/upstream.log" &
pids+=($!)
wait_until "the upstream" 10 test -s "$work/upstream.addr"
upstream=$(<"$work/upstream.addr")
upstream_ip=127.0.0.1:${upstream##*:} # the same server under a second host name

# stop PID: end a process this script started and wait for it.
stop() {
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

start_relay() {
	rm -f "$work/relay.addr"
	"$bin/relay" -upstream-ca "$work/upstream-ca.pem" -ca-out "$work/relay-ca.pem" -addr-out "$work/relay.addr" 2>>"$work/relay.log" &
	pids+=($!)
	relay_pid=$!
	wait_until "the relay" 10 test -s "$work/relay.addr"
	relay_addr=$(<"$work/relay.addr")
}
if want relay; then
	start_relay
fi

if want proxy; then
	# The upstream is on loopback, which the proxy refuses as a destination
	# unless told otherwise (where the binary has that setting).
	allow_private=false
	serve_help=$("$bin/anaplan-proxy" serve -h 2>&1 || true)
	if [[ $serve_help == *-upstream-allow-private* ]]; then
		allow_private=true
	fi
	start_session "$upstream,$upstream_ip" "$allow_private"

	ready() {
		alive "$proxy_pid" || die "anaplan-proxy serve exited: $(tail -n 5 "$work/serve.log")"
		[[ -s "$state_dir/ca.crt" ]] &&
			[[ $(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "http://$admin_addr/readyz") == 200 ]]
	}
	start_proxy() {
		"$bin/anaplan-proxy" serve --config "$config" >>"$work/serve.log" 2>&1 &
		pids+=($!)
		proxy_pid=$!
		wait_until "anaplan-proxy serve to be ready" 30 ready
	}
	start_proxy
fi

# --- how each mode is reached ------------------------------------------------
# load_args MODE and curl_args MODE print the arguments that route a request.
load_args() {
	case $1 in
	direct) printf '%s\n' -cacert "$work/upstream-ca.pem" ;;
	relay) printf '%s\n' -proxy "http://$relay_addr" -cacert "$work/relay-ca.pem" ;;
	proxy) printf '%s\n' -proxy "http://$proxy_addr" -cacert "$state_dir/ca.crt" ;;
	esac
}
curl_args() {
	printf '%s\n' -sS --http1.1 --max-time 300
	case $1 in
	direct) printf '%s\n' --noproxy '*' --cacert "$work/upstream-ca.pem" ;;
	relay) printf '%s\n' --proxy "http://$relay_addr" --cacert "$work/relay-ca.pem" ;;
	proxy) printf '%s\n' --proxy "http://$proxy_addr" --cacert "$state_dir/ca.crt" ;;
	esac
}
pid_of() {
	case $1 in
	relay) echo "$relay_pid" ;;
	proxy) echo "$proxy_pid" ;;
	*) echo "" ;;
	esac
}
# cpu_ticks PID: user and system CPU of the process, in clock ticks.
cpu_ticks() {
	local stat
	stat=$(<"/proc/$1/stat")
	stat=${stat##*) }
	awk '{print $12, $13}' <<<"$stat"
}
clk_tck=$(getconf CLK_TCK)

tsv="$work/results.tsv"
: >"$tsv"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$tsv"; }

# --- first CONNECT to a new host ---------------------------------------------
# The proxy and the relay have not seen either host name yet. The first
# CONNECT after start (to 127.0.0.1) also pays for the process's own cold
# start; the first to the second name (localhost) pays only for signing its
# leaf; later ones reuse it. Each probe times fresh connections from dial to
# completed TLS handshake (through CONNECT). A first CONNECT happens once
# per process, so the relay and the proxy are started afresh for each
# round's probe, and the figures are medians over the rounds like the
# others.
say "bench: first CONNECT"
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
	if ((round > 1)); then
		if want relay; then
			stop "$relay_pid"
			start_relay
		fi
		if want proxy; then
			stop "$proxy_pid"
			start_proxy
		fi
	fi
	for mode in $BENCH_MODES; do
		mapfile -t args < <(load_args "$mode")
		out=$("$bin/load" -url "https://$upstream_ip/small" "${args[@]}" -handshakes 2) || die "$mode: handshake probe failed"
		record "$round" connect "$mode" cold_ms "$(sed -n 's/^first_ms=\([^ ]*\).*/\1/p' <<<"$out")"
		out=$("$bin/load" -url "https://$upstream/small" "${args[@]}" -handshakes 9) || die "$mode: handshake probe failed"
		for kv in $out; do
			record "$round" connect "$mode" "${kv%%=*}" "${kv#*=}"
		done
	done
done

# --- check that each mode does what it should --------------------------------
for mode in $BENCH_MODES; do
	mapfile -t args < <(curl_args "$mode")
	scheme=$(curl "${args[@]}" -o /dev/null -D - "https://$upstream/small" | tr -d '\r' |
		sed -n 's/^[Bb]ench-[Aa]uth-[Ss]cheme: //p')
	want_scheme=none
	[[ $mode == proxy ]] && want_scheme=AnaplanAuthToken
	if [[ $scheme != "$want_scheme" ]]; then
		if [[ $mode == proxy ]]; then
			say "bench: last lines of the proxy's log:"
			tail -n 3 "$work/serve.log" >&2
		fi
		die "$mode: the upstream saw Authorization scheme '$scheme', want '$want_scheme'"
	fi
done

# --- scenarios -----------------------------------------------------------------
upload_file="$work/upload.bin"
head -c "$BENCH_UPLOAD_BYTES" /dev/zero >"$upload_file"

# run_load ROUND SCENARIO MODE CONCURRENCY N
run_load() {
	local round=$1 scenario=$2 mode=$3 c=$4 n=$5 args out
	mapfile -t args < <(load_args "$mode")
	out=$("$bin/load" -url "https://$upstream/small" "${args[@]}" -c "$c" -n "$n") ||
		die "$scenario $mode: load failed: $out"
	for kv in $out; do
		case ${kv%%=*} in
		rps | mean_ms | p50_ms | p99_ms | sent) record "$round" "$scenario" "$mode" "${kv%%=*}" "${kv#*=}" ;;
		esac
	done
}

# run_curl ROUND SCENARIO MODE: the download or the upload.
run_curl() {
	local round=$1 scenario=$2 mode=$3 args out code speed size want_size
	mapfile -t args < <(curl_args "$mode")
	if [[ $scenario == download ]]; then
		want_size=$BENCH_DOWNLOAD_BYTES
		out=$(curl "${args[@]}" -o /dev/null -w '%{http_code} %{speed_download} %{size_download}' \
			"https://$upstream/stream?bytes=$BENCH_DOWNLOAD_BYTES")
	else
		# Expect: 100-continue off, so the figure is the transfer rate and
		# not curl's one-second wait for a 100 Continue.
		want_size=$BENCH_UPLOAD_BYTES
		out=$(curl "${args[@]}" -o /dev/null -H 'Expect:' -T "$upload_file" \
			-w '%{http_code} %{speed_upload} %{size_upload}' "https://$upstream/upload")
	fi
	read -r code speed size <<<"$out"
	[[ $code == 200 && $size == "$want_size" ]] || die "$scenario $mode: HTTP $code, $size of $want_size bytes"
	record "$round" "$scenario" "$mode" mbps "$(awk -v s="$speed" 'BEGIN{printf "%.1f", s / 1e6}')"
}

# measure ROUND SCENARIO MODE: one figure set, with the RSS peak and CPU time
# of the relay or proxy process over exactly this scenario.
measure() {
	local round=$1 scenario=$2 mode=$3 pid u0 s0 u1 s1
	pid=$(pid_of "$mode")
	if [[ -n $pid ]]; then
		alive "$pid" || die "the $mode process is gone (logs in $work)"
		echo 5 >"/proc/$pid/clear_refs" # reset VmHWM to the current RSS
		read -r u0 s0 < <(cpu_ticks "$pid")
	fi
	case $scenario in
	c1) run_load "$round" c1 "$mode" 1 "$BENCH_C1_N" ;;
	c50) run_load "$round" c50 "$mode" "$BENCH_C50" "$BENCH_C50_N" ;;
	download | upload) run_curl "$round" "$scenario" "$mode" ;;
	esac
	if [[ -n $pid ]]; then
		read -r u1 s1 < <(cpu_ticks "$pid")
		record "$round" "$scenario" "$mode" cpu_s "$(awk -v a="$((u0 + s0))" -v b="$((u1 + s1))" -v h="$clk_tck" 'BEGIN{printf "%.3f", (b - a) / h}')"
		record "$round" "$scenario" "$mode" cpu_user_s "$(awk -v a="$u0" -v b="$u1" -v h="$clk_tck" 'BEGIN{printf "%.3f", (b - a) / h}')"
		record "$round" "$scenario" "$mode" cpu_sys_s "$(awk -v a="$s0" -v b="$s1" -v h="$clk_tck" 'BEGIN{printf "%.3f", (b - a) / h}')"
		record "$round" "$scenario" "$mode" rss_mib "$(awk '/^VmHWM:/{printf "%.1f", $2 / 1024}' "/proc/$pid/status")"
	fi
}

read -r -a mode_list <<<"$BENCH_MODES"
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
	# Rotate the order each round so that no mode always goes first.
	order=()
	for ((i = 0; i < ${#mode_list[@]}; i++)); do
		order+=("${mode_list[(i + round - 1) % ${#mode_list[@]}]}")
	done
	for scenario in c1 c50 download upload; do
		say "bench: round $round/$BENCH_ROUNDS: $scenario (${order[*]})"
		for mode in "${order[@]}"; do
			measure "$round" "$scenario" "$mode"
		done
	done
done

# --- idle client connections -------------------------------------------------------
# What a client connection costs while it waits for its next call: a fresh
# relay or proxy answers one call (the baseline), then BENCH_IDLE_N client
# connections that each made one call and stay open; the proxy also keeps
# its full pool of idle upstream connections. The figure is the growth of
# the resident set divided by the connections.
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
if ((BENCH_IDLE_N > 0)); then
	for ((round = 1; round <= BENCH_ROUNDS; round++)); do
		for mode in $BENCH_MODES; do
			case $mode in
			relay) stop "$relay_pid"; start_relay ;;
			proxy) stop "$proxy_pid"; start_proxy ;;
			*) continue ;;
			esac
			say "bench: round $round/$BENCH_ROUNDS: $BENCH_IDLE_N idle client connections ($mode)"
			mapfile -t args < <(load_args "$mode")
			"$bin/load" -url "https://$upstream/small" "${args[@]}" -c 1 -n 1 -warmup-n 0 >/dev/null ||
				die "$mode: the baseline call failed"
			pid=$(pid_of "$mode")
			base=$(rss_kib "$pid")
			rm -f "$work/idle.ready"
			"$bin/load" -url "https://$upstream/small" "${args[@]}" -c 64 -idle "$BENCH_IDLE_N" \
				-idle-ready "$work/idle.ready" 2>"$work/idle.log" &
			idle_pid=$!
			pids+=("$idle_pid")
			wait_until "$BENCH_IDLE_N idle connections through $mode" 120 test -s "$work/idle.ready"
			held=$(rss_kib "$pid")
			if [[ $mode == proxy ]]; then
				record "$round" idle "$mode" pool_idle "$(curl -s --noproxy '*' "http://$admin_addr/metrics" |
					awk '/^anaplan_proxy_upstream_idle_connections /{print $2; f=1} END{if (!f) print "nan"}')"
			fi
			stop "$idle_pid"
			record "$round" idle "$mode" kib_per_conn "$(awk -v a="$base" -v b="$held" -v n="$BENCH_IDLE_N" 'BEGIN{printf "%.1f", (b - a) / n}')"
		done
	done
fi

# --- report ------------------------------------------------------------------------
mkdir -p "$results"
cp "$tsv" "$results/latest.tsv"
{
	echo "# anaplan-proxy benchmark"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -n 1)), $(go version | cut -d' ' -f3), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)."
	echo "Client, proxy and upstream share the machine. Clients speak HTTP/1.1; the upstream offers HTTP/2: $h2."
	echo "c=1: $BENCH_C1_N requests; c=$BENCH_C50: $BENCH_C50_N requests (small GETs, keep-alive, after a warm-up);"
	echo "download $BENCH_DOWNLOAD_BYTES bytes, upload $BENCH_UPLOAD_BYTES bytes (curl, MB = 10^6 bytes)."
	echo "RSS and CPU are those of the relay or proxy process over each scenario (VmHWM reset before it)."
	echo "CONNECT times: fresh connections from dial to completed TLS handshake; the first after start (host 127.0.0.1),"
	echo "then the first to a second new host (localhost) and the median of 8 more to it; relay and proxy start afresh"
	echo "for each round's CONNECTs. Idle connections: $BENCH_IDLE_N client connections that each made one call, held open"
	echo "(the proxy keeps its pool of idle upstream connections too); the growth of the resident set over a fresh process"
	echo "that answered one call, per connection."
	[[ -z $busy ]] || echo "$busy"
	echo
	"$bin/report" "$tsv"
} >"$results/latest.md"

# --- optional profile ------------------------------------------------------------
if [[ $BENCH_PROFILE == 1 ]] && want "$BENCH_PROFILE_MODE"; then
	say "bench: profiling the $BENCH_PROFILE_MODE under c=$BENCH_C50 load"
	profiled=$proxy_pid
	if [[ $BENCH_PROFILE_MODE == relay ]]; then
		profiled=$relay_pid
	fi
	perf record -F 999 -g -p "$profiled" -o "$work/perf.data" 2>"$work/perf.log" &
	perf_pid=$!
	pids+=("$perf_pid")
	mapfile -t args < <(load_args "$BENCH_PROFILE_MODE")
	"$bin/load" -url "https://$upstream/small" "${args[@]}" -c "$BENCH_C50" -n "$BENCH_C50_N" >/dev/null
	kill -INT "$perf_pid"
	wait "$perf_pid" || true
	# top MODE PATTERN: the 25 heaviest symbols whose line matches PATTERN.
	# Self time shows where cycles burn; time with callees shows which code
	# paths (ours, goproxy's, net/http's) lead there.
	top() {
		perf report -i "$work/perf.data" --stdio "$1" --sort symbol 2>/dev/null |
			awk -v re="$2" '/^ +[0-9.]+%/ && $0 ~ re && n < 25 { sub(/[ -]+$/, ""); print; n++ }' || true
	}
	{
		echo
		echo "perf profile of the $BENCH_PROFILE_MODE under c=$BENCH_C50 load, $BENCH_C50_N requests (after the rounds, not measured):"
		echo
		echo '```'
		echo "self time:"
		top --no-children .
		echo
		echo "with callees, user space only:"
		top --children '[[][.][]]'
		echo '```'
	} >>"$results/latest.md"
fi

cat "$results/latest.md"
say "bench: written to $results/latest.md"

if [[ $BENCH_WAN == 1 ]]; then
	wan_bin=""
	if want proxy; then
		wan_bin="$bin/anaplan-proxy" # the binary just measured
	fi
	BENCH_PROXY_BIN=$wan_bin "$repo/bench/wan.sh"
fi
