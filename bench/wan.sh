#!/usr/bin/env bash
# Measures what a wide-area round trip between the proxy and Anaplan costs
# the calls of an integration script, which the loopback benchmark
# (bench/run.sh) cannot show. A delay relay (bench/delay) sits in front of
# the HTTPS upstream (bench/upstream) and adds a round trip time; curl calls
# the upstream through it directly, through anaplan-proxy, and through Squid
# with ssl-bump when Squid is installed, interleaved in one run. Two
# workloads at each round trip time:
#   per call:   N curl processes one after another, one GET each, as a
#               script that starts a task and polls it calls the API;
#   keep-alive: one curl process with N URLs on one connection.
# Each figure is curl's time_total of a call, averaged over the N calls;
# the table shows the median over the rounds. It is written to
# bench/results/wan.md, the raw figures to bench/results/wan.tsv.
#
# Needs: go, curl. Optional: squid with ssl-bump (Debian: apt-get install
# squid-openssl; openssl and python3 set it up); without it the Squid
# column is left out.
#
# Settings (environment):
#   BENCH_WAN_ROUNDS=3          rounds; each figure is the median over them
#   BENCH_WAN_N=20              calls per workload and round
#   BENCH_WAN_RTTS="20 40 80"   round trip times to add, in ms
#   BENCH_WAN_MODES="direct proxy squid"  what to measure (squid is skipped when absent)
#   BENCH_PROXY_BIN=            an anaplan-proxy binary to measure instead of building ./cmd/anaplan-proxy
#   BENCH_KEEP=0                1: keep the work directory (logs, configs) for inspection
set -euo pipefail

BENCH_WAN_ROUNDS=${BENCH_WAN_ROUNDS:-3}
BENCH_WAN_N=${BENCH_WAN_N:-20}
BENCH_WAN_RTTS=${BENCH_WAN_RTTS:-20 40 80}
BENCH_WAN_MODES=${BENCH_WAN_MODES:-direct proxy squid}
BENCH_PROXY_BIN=${BENCH_PROXY_BIN:-}
BENCH_KEEP=${BENCH_KEEP:-0}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
results="$repo/bench/results"

name=bench-wan
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

command -v go >/dev/null || die "go is missing (https://go.dev/dl/ or apt-get install golang-go)"
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
modes=()
for m in $BENCH_WAN_MODES; do
	case $m in
	direct | proxy) modes+=("$m") ;;
	squid)
		if command -v squid >/dev/null && [[ -x /usr/lib/squid/security_file_certgen ]] && command -v openssl >/dev/null &&
			command -v python3 >/dev/null; then
			modes+=(squid)
		else
			say "bench-wan: squid with ssl-bump (and openssl, python3 to set it up) is not installed (Debian: apt-get install squid-openssl): measuring without it"
		fi
		;;
	*) die "BENCH_WAN_MODES: unknown mode $m (want direct, proxy, squid)" ;;
	esac
done
want() { [[ " ${modes[*]} " == *" $1 "* ]]; }

# --- build -------------------------------------------------------------------
bin="$work/bin"
mkdir -p "$bin"
say "bench-wan: building"
(cd "$repo" && go build -o "$bin/" ./bench/upstream ./bench/delay ./bench/session)
if want proxy; then
	if [[ -n $BENCH_PROXY_BIN ]]; then
		cp "$BENCH_PROXY_BIN" "$bin/anaplan-proxy" || die "BENCH_PROXY_BIN: cannot copy $BENCH_PROXY_BIN"
	else
		(cd "$repo" && go build -o "$bin/anaplan-proxy" ./cmd/anaplan-proxy)
	fi
fi

# --- the upstream and a delay relay per round trip time ------------------------
"$bin/upstream" -ca-out "$work/upstream-ca.pem" -addr-out "$work/upstream.addr" -h2=false 2>"$work/upstream.log" &
pids+=($!)
wait_until "the upstream" 10 test -s "$work/upstream.addr"
upstream=$(<"$work/upstream.addr")

declare -A target
hosts=()
for rtt in $BENCH_WAN_RTTS; do
	[[ $rtt =~ ^[0-9]+$ ]] || die "BENCH_WAN_RTTS: $rtt is not a number of milliseconds"
	"$bin/delay" -target "$upstream" -rtt "${rtt}ms" -addr-out "$work/delay-$rtt.addr" 2>"$work/delay-$rtt.log" &
	pids+=($!)
	wait_until "the delay relay for $rtt ms" 10 test -s "$work/delay-$rtt.addr"
	target[$rtt]=$(<"$work/delay-$rtt.addr")
	hosts+=("${target[$rtt]}")
done

# --- anaplan-proxy ---------------------------------------------------------------
if want proxy; then
	allow_private=false
	if [[ $("$bin/anaplan-proxy" serve -h 2>&1 || true) == *-upstream-allow-private* ]]; then
		allow_private=true
	fi
	inject=$(
		IFS=,
		echo "${hosts[*]}"
	)
	start_session "$inject" "$allow_private"
	"$bin/anaplan-proxy" serve --config "$config" >>"$work/serve.log" 2>&1 &
	pids+=($!)
	proxy_pid=$!
	proxy_ready() {
		alive "$proxy_pid" || die "anaplan-proxy serve exited: $(tail -n 5 "$work/serve.log")"
		[[ -s "$state_dir/ca.crt" ]] &&
			[[ $(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "http://$admin_addr/readyz") == 200 ]]
	}
	wait_until "anaplan-proxy serve to be ready" 30 proxy_ready
fi

# --- Squid with ssl-bump ---------------------------------------------------------
if want squid; then
	squid_dir="$work/squid"
	mkdir -p "$squid_dir"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench squid CA" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
		-keyout "$squid_dir/ca.key" -out "$squid_dir/ca.pem" 2>"$squid_dir/openssl.log" ||
		die "openssl could not make Squid's CA: $(tail -n 3 "$squid_dir/openssl.log")"
	/usr/lib/squid/security_file_certgen -c -s "$squid_dir/ssl_db" -M 4MB >"$squid_dir/certgen.log" 2>&1 ||
		die "security_file_certgen failed: $(tail -n 3 "$squid_dir/certgen.log")"
	squid_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	cat >"$squid_dir/squid.conf" <<EOF
http_port 127.0.0.1:$squid_port ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB tls-cert=$squid_dir/ca.pem tls-key=$squid_dir/ca.key
sslcrtd_program /usr/lib/squid/security_file_certgen -s $squid_dir/ssl_db -M 4MB
sslcrtd_children 4 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile=$work/upstream-ca.pem
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $squid_dir/cache.log
pid_filename $squid_dir/squid.pid
coredump_dir $squid_dir
shutdown_lifetime 1 seconds
EOF
	if [[ $(id -u) == 0 ]]; then
		# Squid drops root for its own user, which must read all this.
		squid_user=$(id -un proxy 2>/dev/null || echo nobody)
		chmod 755 "$work"
		chown -R "$squid_user" "$squid_dir"
		chmod a+r "$work/upstream-ca.pem"
		echo "cache_effective_user $squid_user" >>"$squid_dir/squid.conf"
	fi
	squid -N -f "$squid_dir/squid.conf" >"$squid_dir/squid.out" 2>&1 &
	pids+=($!)
	squid_pid=$!
	squid_ready() {
		alive "$squid_pid" || die "squid exited: $(tail -n 5 "$squid_dir/squid.out" "$squid_dir/cache.log" 2>/dev/null)"
		curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$squid_port/" 2>/dev/null
	}
	wait_until "squid to listen" 30 squid_ready
fi

# --- how each mode is reached --------------------------------------------------
curl_args() {
	printf '%s\n' -sS --http1.1 --max-time 60 -w '%{http_code} %{time_total}\n'
	case $1 in
	direct) printf '%s\n' --noproxy '*' --cacert "$work/upstream-ca.pem" ;;
	proxy) printf '%s\n' --proxy "http://$proxy_addr" --cacert "$state_dir/ca.crt" ;;
	squid) printf '%s\n' --proxy "http://127.0.0.1:$squid_port" --cacert "$squid_dir/ca.pem" ;;
	esac
}

tsv="$work/wan.tsv"
: >"$tsv"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$tsv"; }

# calls RTT MODE WORKLOAD: the N calls of one workload; prints their mean
# time_total in ms.
calls() {
	local rtt=$1 mode=$2 workload=$3 args url out urls=() i
	mapfile -t args < <(curl_args "$mode")
	url="https://${target[$rtt]}/small"
	if [[ $workload == per_call ]]; then
		out=$(for ((i = 0; i < BENCH_WAN_N; i++)); do curl "${args[@]}" -o /dev/null "$url"; done)
	else
		for ((i = 0; i < BENCH_WAN_N; i++)); do urls+=(-o /dev/null "$url"); done
		out=$(curl "${args[@]}" "${urls[@]}")
	fi
	awk -v n="$BENCH_WAN_N" -v what="$workload $mode ${rtt}ms" '
		$1 != 200 { bad++ } { sum += $2; got++ }
		END {
			if (bad || got != n) { printf "%s: %d of %d calls failed\n", what, bad + n - got, n > "/dev/stderr"; exit 1 }
			printf "%.1f", sum / n * 1000
		}' <<<"$out"
}

# A first call through each mode (TLS leaf, warm connections) is not measured.
for rtt in $BENCH_WAN_RTTS; do
	for mode in "${modes[@]}"; do
		mapfile -t args < <(curl_args "$mode")
		out=$(curl "${args[@]}" -o /dev/null "https://${target[$rtt]}/small") || die "$mode ${rtt}ms: the first call failed"
		[[ $out == 200\ * ]] || die "$mode ${rtt}ms: the first call got $out"
	done
done

for ((round = 1; round <= BENCH_WAN_ROUNDS; round++)); do
	order=()
	for ((i = 0; i < ${#modes[@]}; i++)); do
		order+=("${modes[(i + round - 1) % ${#modes[@]}]}")
	done
	for rtt in $BENCH_WAN_RTTS; do
		say "bench-wan: round $round/$BENCH_WAN_ROUNDS: ${rtt} ms (${order[*]})"
		for workload in per_call keep_alive; do
			for mode in "${order[@]}"; do
				ms=$(calls "$rtt" "$mode" "$workload") || die "$workload $mode ${rtt}ms failed"
				record "$round" "$rtt" "$workload" "$mode" "$ms"
			done
		done
	done
done

# --- report ------------------------------------------------------------------------
mkdir -p "$results"
cp "$tsv" "$results/wan.tsv"
# report: the table of medians over the rounds, with the ratios and targets.
report() {
	awk -F'\t' -v modes="${modes[*]}" -v rtts="$BENCH_WAN_RTTS" '
		function median(key,   n, i, j, t, a) {
			n = split(vals[key], a, " ")
			for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
			if (n == 0) return ""
			return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "—" : sprintf("%.2f×", a / b) }
		{ k = $2 SUBSEP $3 SUBSEP $4; vals[k] = vals[k] " " $5 }
		END {
			nm = split(modes, m, " "); nr = split(rtts, r, " ")
			hasSquid = (modes ~ /squid/); hasProxy = (modes ~ /proxy/)
			printf "| round trip | workload |"
			for (i = 1; i <= nm; i++) printf " %s (ms) |", (m[i] == "proxy" ? "anaplan-proxy" : (m[i] == "squid" ? "Squid ssl-bump" : m[i]))
			if (hasProxy) printf " proxy ÷ direct |"
			if (hasSquid) printf " Squid ÷ direct |"
			if (hasProxy && hasSquid) printf " proxy ÷ Squid |"
			printf " target |\n|---|---|"
			for (i = 1; i <= nm; i++) printf "---:|"
			if (hasProxy) printf "---:|"
			if (hasSquid) printf "---:|"
			if (hasProxy && hasSquid) printf "---:|"
			printf "---|\n"
			split("per_call keep_alive", w, " ")
			for (i = 1; i <= nr; i++) for (j = 1; j <= 2; j++) {
				printf "| %s ms | %s |", r[i], (w[j] == "per_call" ? "per call (a curl each)" : "keep-alive (one curl)")
				for (k = 1; k <= nm; k++) { v = median(r[i] SUBSEP w[j] SUBSEP m[k]); med[m[k]] = v; printf " %s |", v }
				pd = ratio(med["proxy"], med["direct"]); sd = ratio(med["squid"], med["direct"]); ps = ratio(med["proxy"], med["squid"])
				if (hasProxy) printf " %s |", pd
				if (hasSquid) printf " %s |", sd
				if (hasProxy && hasSquid) printf " %s |", ps
				target = ""
				if (hasProxy && r[i] == 40 && w[j] == "per_call") {
					ok = (med["proxy"] <= 0.45 * med["direct"]) && (!hasSquid || med["proxy"] <= med["squid"])
					target = "≤ 0.45 × direct" (hasSquid ? " and ≤ Squid" : "") ": " (ok ? "met" : "missed")
				} else if (hasProxy && w[j] == "keep_alive") {
					target = "≤ 1.10 × direct: " ((med["proxy"] <= 1.10 * med["direct"]) ? "met" : "missed")
				}
				printf " %s |\n", target
			}
		}' "$tsv"
}
{
	echo "# anaplan-proxy WAN benchmark"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(go version | cut -d' ' -f3), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(want squid && echo ", $(squid -v | head -n 1)")."
	echo "A delay relay adds the round trip between the client side and the upstream (and one more for a new"
	echo "connection's TCP handshake). Mean of curl's time_total over $BENCH_WAN_N calls, median over $BENCH_WAN_ROUNDS rounds."
	[[ -z $busy ]] || echo "$busy"
	echo
	report
} >"$results/wan.md"
cat "$results/wan.md"
say "bench-wan: written to $results/wan.md"
