#!/usr/bin/env bash
# bench/b-counts.sh: run workload b (etcd's benchmark tool, put, --conns 10)
# against a fresh 3-member Cairn cluster on loopback and print, per member,
# read and write system calls and CPU per put (from /proc/<pid>/io and
# /proc/<pid>/stat), and puts per WAL save and per peer message (from each
# member's /metrics, served on its client port + 2), and the benchmark
# tool's own CPU per put. Cairn only; for
# finding where a put's cost goes, not for comparisons (bench/compare.sh
# does those). See docs/performance.md.
#
#   bench/b-counts.sh [--clients N] [--total N] [BINARY]
#
# BINARY defaults to a cairn built from this checkout. Environment: extra
# variables (GOMAXPROCS=1, ...) pass through to the servers. Needs etcd's
# benchmark tool, which bench/compare.sh builds into bench/.cache/bin
# (CAIRN_BENCH_CACHE overrides the cache), etcdctl and curl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CAIRN_BENCH_CACHE:-$ROOT/bench/.cache}
CLIENTS=100
TOTAL=100000
BIN=""
while (($#)); do
	case $1 in
	--clients) CLIENTS=$2; shift ;;
	--total) TOTAL=$2; shift ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "b-counts.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
	*) BIN=$1 ;;
	esac
	shift
done
NAME=b-counts.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
if [[ -z $BIN ]]; then
	BIN=$DATA/cairn
	(cd "$ROOT" && go build -o "$BIN" ./cmd/cairn)
fi

MP=(24381 24391 24401)
start_cairn "$BIN" "$DATA" 24379
counts() { # reads writes cpu-ticks peer-messages wal-saves, one line per member
	local i p
	for i in 0 1 2; do
		p=${PIDS[i]}
		echo "$(awk '/^syscr|^syscw/{printf "%s ", $2}' "/proc/$p/io") $(awk '{print $14 + $15}' "/proc/$p/stat")" \
			"$(curl -s "http://127.0.0.1:${MP[i]}/metrics" | awk '/^cairn_wal_save_duration_seconds_count|^cairn_peer_messages_sent_total/{printf "%s ", $2}')"
	done
}
before=$(counts)
times >"$DATA/times0" # this shell's children's CPU: the tool's, across the run
"$BENCH" --precise --endpoints "$EPS" --clients "$CLIENTS" --conns 10 put --total "$TOTAL" \
	--sequential-keys --key-space-size "$TOTAL" --key-size 8 --val-size 256 >"$DATA/bench.out" 2>&1
times >"$DATA/times1"
after=$(counts)
tr '\r' '\n' <"$DATA/bench.out" | grep -E "Requests/sec|50% in|99% in" | tr -s ' \t' ' '
hz=$(getconf CLK_TCK)
paste <(echo "$before") <(echo "$after") | awk -v n="$TOTAL" -v hz="$hz" '
	{ r = ($6 - $1) / n; w = ($7 - $2) / n; c = ($8 - $3) * 1e6 / hz / n; m = ($9 - $4) / n; f = ($10 - $5) / n
	  R += r; W += w; C += c; F += f; M += m
	  printf "m%d: reads/put %.3f  writes/put %.3f  CPU/put %.1f us  puts/WAL save %.1f  puts/peer msg %.1f\n", NR - 1, r, w, c, 1 / f, 1 / m }
	END { printf "all: reads/put %.3f  writes/put %.3f  CPU/put %.1f us  saves/put %.3f  peer msgs/put %.3f\n", R, W, C, F, M }'
child_s() { awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); n += p[1] * 60 + p[2] } printf "%.3f", n }' "$1"; }
awk -v a="$(child_s "$DATA/times0")" -v b="$(child_s "$DATA/times1")" -v n="$TOTAL" 'BEGIN { printf "benchmark tool: CPU/put %.1f us\n", (b - a) * 1e6 / n }'
