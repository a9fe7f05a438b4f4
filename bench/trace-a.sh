#!/usr/bin/env bash
# bench/trace-a.sh: one client's puts (workload a: etcd's benchmark tool,
# put, one client, one connection) against a fresh 3-member Cairn cluster
# on loopback, with a Go execution trace of every member taken at the same
# time, then a few milliseconds of their merged timeline (benchcmp
# timeline): how one put travels through the three processes. Cairn only;
# for finding where a put waits, not for comparisons (bench/compare.sh
# does those). See docs/performance.md.
#
#   bench/trace-a.sh [--endpoint leader|follower|all] [--out DIR] [BINARY]
#
# --endpoint picks where the client sends its puts (default all, as in
# compare.sh: two puts in three are then forwarded by a follower). The
# traces stay in DIR (default a temporary directory, printed); look at
# other windows with
#   benchcmp timeline -from S -dur S m0=DIR/m0.trace m1=DIR/m1.trace m2=DIR/m2.trace
# BINARY defaults to a cairn built from this checkout. Needs etcd's
# benchmark tool (bench/compare.sh --quick builds it into bench/.cache/bin;
# CAIRN_BENCH_CACHE overrides the cache), etcdctl and curl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CAIRN_BENCH_CACHE:-$ROOT/bench/.cache}
ENDPOINT=all
OUT=""
BIN=""
while (($#)); do
	case $1 in
	--endpoint) ENDPOINT=$2; shift ;;
	--out) OUT=$2; shift ;;
	-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "trace-a.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
	*) BIN=$1 ;;
	esac
	shift
done
case $ENDPOINT in leader | follower | all) ;; *) echo "trace-a.sh: --endpoint must be leader, follower or all" >&2; exit 2 ;; esac
NAME=trace-a.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need_tools
DATA=$(mktemp -d)
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
(cd "$ROOT" && go build -o "$DATA/benchcmp" ./bench/benchcmp)
if [[ -z $BIN ]]; then
	BIN=$DATA/cairn
	(cd "$ROOT" && go build -o "$BIN" ./cmd/cairn)
fi

CP=(24379 24389 24399) MP=(24381 24391 24401)
start_cairn "$BIN" "$DATA" 24379 --enable-pprof
# The leader is the member whose status says so (IS LEADER column).
L=$(ETCDCTL_API=3 etcdctl --endpoints "$EPS" endpoint status -w simple | awk -F', ' '$5 == "true" { print NR - 1 }')
[[ -n $L ]] || { echo "trace-a.sh: no leader found" >&2; exit 1; }
F=$(((L + 1) % 3))
case $ENDPOINT in
leader) E=127.0.0.1:${CP[L]} ;;
follower) E=127.0.0.1:${CP[F]} ;;
all) E=$EPS ;;
esac
echo "leader m$L; client -> $ENDPOINT ($E)"
"$BENCH" --precise --endpoints "$E" --clients 1 --conns 1 put --total 4000 --key-size 8 --val-size 256 >"$DATA/bench.out" 2>&1 &
B=$!
sleep 1.5 # past connection set-up
C=()
for i in 0 1 2; do
	curl -sf "http://127.0.0.1:${MP[i]}/debug/pprof/trace?seconds=2" -o "$OUT/m$i.trace" &
	C+=($!)
done
wait "${C[@]}"
wait "$B"
tr '\r' '\n' <"$DATA/bench.out" | grep -E "Requests/sec|50% in|99% in" | tr -s ' \t' ' '
"$DATA/benchcmp" timeline -from 0.5 -dur 0.003 m0="$OUT/m0.trace" m1="$OUT/m1.trace" m2="$OUT/m2.trace"
echo "traces in $OUT (m$L leads)"
