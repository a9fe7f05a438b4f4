#!/usr/bin/env bash
# bench/pair.sh: compare two Cairn builds fairly on a noisy host. Each
# round starts both builds' 3-member clusters side by side on loopback,
# fresh, and runs etcd's benchmark tool against one and then the other
# (A B, then B A, ...), so that whatever the host does during the
# comparison falls on both. Fresh clusters every round, because a
# cluster can keep an advantage or a handicap for its whole life (seen:
# the same two builds compared 5 of 6 rounds one way on one pair of
# clusters and 9 of 10 the other way on the next). Prints each round
# (throughput, p50, p99, server CPU per request), the medians, and in how
# many rounds B was faster. Successive single runs on the shared hosts
# this project runs on differ by more than most changes do; see
# docs/performance.md.
#
#   bench/pair.sh [--rounds N] [--clients N] [--total N] BINARY_A BINARY_B
#
# Defaults: 6 rounds of workload b (100 clients, 10 connections, 100,000
# puts of sequential 8-byte keys and 256-byte values); --clients 1 gives
# workload a. Needs etcd's benchmark tool (bench/compare.sh --quick builds
# it into bench/.cache/bin; CAIRN_BENCH_CACHE overrides the cache),
# etcdctl and curl. Uses ports 24379-24401 and 25379-25401.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CAIRN_BENCH_CACHE:-$ROOT/bench/.cache}
NAME=pair.sh
ROUNDS=6 CLIENTS=100 TOTAL=100000
BINS=()
while (($#)); do
	case $1 in
	--rounds) ROUNDS=$2; shift ;;
	--clients) CLIENTS=$2; shift ;;
	--total) TOTAL=$2; shift ;;
	-h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "pair.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
	*) BINS+=("$1") ;;
	esac
	shift
done
((${#BINS[@]} == 2)) || { echo "pair.sh: want two binaries, A and B (see --help)" >&2; exit 2; }
for b in "${BINS[@]}"; do [[ -x $b ]] || { echo "pair.sh: $b is not an executable" >&2; exit 2; }; done
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools
CONNS=$((CLIENTS < 10 ? CLIENTS : 10))

DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; sleep 1; rm -rf "$DATA"' EXIT
HZ=$(getconf CLK_TCK)

# start_both: fresh clusters for both builds.
start_both() {
	rm -rf "$DATA/A" "$DATA/B"
	mkdir -p "$DATA/A" "$DATA/B"
	PIDS=()
	start_cairn "${BINS[0]}" "$DATA/A" 24379
	EPS_A=$EPS PIDS_A=("${PIDS[@]}")
	start_cairn "${BINS[1]}" "$DATA/B" 25379
	EPS_B=$EPS PIDS_B=("${PIDS[@]:3}")
}

stop_both() {
	kill "${PIDS[@]}" 2>/dev/null || true
	local p
	for p in "${PIDS[@]}"; do
		while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
	done
	PIDS=()
}

run() { # A|B -> "qps p50_ms p99_ms cpu_us_per_request"
	local eps pids c0 c1 out=$DATA/bench.out
	if [[ $1 == A ]]; then eps=$EPS_A pids=("${PIDS_A[@]}"); else eps=$EPS_B pids=("${PIDS_B[@]}"); fi
	c0=$(cpu_ticks "${pids[@]}")
	timeout 600 "$BENCH" --precise --endpoints "$eps" --clients "$CLIENTS" --conns "$CONNS" put --total "$TOTAL" \
		--sequential-keys --key-space-size "$TOTAL" --key-size 8 --val-size 256 >"$out" 2>&1 ||
		{ echo "pair.sh: the benchmark tool failed against $1:" >&2; tail -5 "$out" >&2; exit 1; }
	c1=$(cpu_ticks "${pids[@]}")
	tr '\r' '\n' <"$out" | awk -v c=$((c1 - c0)) -v hz="$HZ" -v n="$TOTAL" '
		/Requests\/sec/ { q = $2 } /50% in/ { p50 = $3 * 1000 } /99% in/ { p99 = $3 * 1000 }
		END { printf "%.0f %.3f %.3f %.1f\n", q, p50, p99, c * 1e6 / hz / n }'
}

printf 'round  build  QPS      p50 ms  p99 ms  server CPU us/req\n'
: >"$DATA/results"
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then order="A B"; else order="B A"; fi
	start_both
	for x in $order; do
		read -r q p50 p99 cpu < <(run "$x")
		printf '%-6d %-6s %-8s %-7s %-7s %s\n' "$r" "$x" "$q" "$p50" "$p99" "$cpu"
		echo "$r $x $q $p50 $p99 $cpu" >>"$DATA/results"
	done
	stop_both
done
awk -v a="${BINS[0]}" -v b="${BINS[1]}" '
	function median(v, n,   i, j, t) {
		for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
		return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
	}
	{ k = $2; n[k]++; q[k, n[k]] = $3; p[k, n[k]] = $4; c[k, n[k]] = $6; r[$1, k] = $3 }
	END {
		for (k in n) { for (i = 1; i <= n[k]; i++) { tq[i] = q[k, i]; tp[i] = p[k, i]; tc[i] = c[k, i] }
			mq[k] = median(tq, n[k]); mp[k] = median(tp, n[k]); mc[k] = median(tc, n[k]) }
		for (i = 1; i <= n["A"]; i++) if (r[i, "B"] > r[i, "A"]) faster++
		printf "median A (%s): %.0f QPS, p50 %.3f ms, %.1f us CPU/req\n", a, mq["A"], mp["A"], mc["A"]
		printf "median B (%s): %.0f QPS, p50 %.3f ms, %.1f us CPU/req\n", b, mq["B"], mp["B"], mc["B"]
		printf "B/A: QPS %.3f, p50 %.3f, CPU %.3f; B faster in %d of %d rounds\n", mq["B"] / mq["A"], mp["B"] / mp["A"], mc["B"] / mc["A"], faster + 0, n["A"]
	}' "$DATA/results"
