#!/usr/bin/env bash
# bench/compare.sh: run etcd's own benchmark tool, with the same arguments,
# against a 3-member etcd cluster and a 3-member Cairn cluster on loopback,
# and print one table of medians (issue 6). See docs/performance.md.
#
#   bench/compare.sh [--quick] [--reps N] [--f-reps N] [--out DIR] [--only a,b,...] [--pprof SECS]
#
# --quick   tiny counts, 1 repetition: checks that the script works (~2 min)
# --reps    repetitions of workloads a-e (default 3); systems alternate
# --f-reps  repetitions of workload f (load 1M keys, RSS, restart; default 1)
# --out     results directory (default bench/.cache/results/<timestamp>)
# --f-keys  keys loaded by workload f (default 1000000; --quick: 10000)
# --only    comma-separated workload ids to run (a b c d e e2 f)
# --pprof   CPU-profile every member for SECS seconds from the start of each
#           first-repetition run (both started with --enable-pprof; Cairn
#           serves it on --listen-metrics, client port + 2), and take a 2 s
#           execution trace of each Cairn member; in OUT/prof
#
# Installs what it needs: Debian's etcd-server and etcd-client (apt-get,
# skipped if etcd and etcdctl are on PATH) and etcd's benchmark tool, built
# from the Go module proxy in a scratch module under bench/.cache (not part
# of this repository). Environment: CAIRN_BENCH_CACHE overrides the cache.
set -euo pipefail
# Numbers are read back from bash's `times`, awk and the tool's output:
# keep the decimal point a point whatever the user's locale.
export LC_ALL=C

ETCD_MODULE_VERSION=v3.6.8
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CAIRN_BENCH_CACHE:-$ROOT/bench/.cache}
QUICK=0
REPS=3
FREPS=1
OUT=""
ONLY="a,b,c,d,e,e2,f"
PPROF=0
FAILED=0
FKEYS=""
ARGV="$*"

while (($#)); do
	case $1 in
	--quick) QUICK=1 ;;
	--reps) REPS=$2; shift ;;
	--f-reps) FREPS=$2; shift ;;
	--out) OUT=$2; shift ;;
	--only) ONLY=$2; shift ;;
	--pprof) PPROF=$2; shift ;;
	--f-keys) FKEYS=$2; shift ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
if ((QUICK)); then
	REPS=1
	FREPS=1
fi
OUT=${OUT:-$CACHE/results/$(date +%Y%m%d-%H%M%S)$( ! ((QUICK)) || echo -quick)}

log() { printf '%s compare.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- counts
if ((QUICK)); then
	N_A=500 N_B=2000 N_READ=2000 N_TXN=1000 N_STM=500 N_F=10000 RUN_TIMEOUT=120 RESTARTS=1
else
	N_A=10000 N_B=100000 N_READ=100000 N_TXN=50000 N_STM=20000 N_F=1000000 RUN_TIMEOUT=900 RESTARTS=3
fi
N_F=${FKEYS:-$N_F}
VAL=256

# ---------------------------------------------------------------- install
install_deps() {
	local pkgs=()
	command -v etcd >/dev/null || pkgs+=(etcd-server)
	command -v etcdctl >/dev/null || pkgs+=(etcd-client)
	if ((${#pkgs[@]})); then
		log "installing ${pkgs[*]} with apt-get"
		local sudo=""
		((EUID == 0)) || sudo=sudo
		$sudo apt-get update -qq || die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
			die "apt-get install ${pkgs[*]} failed"
	fi
	command -v go >/dev/null || die "go is not on PATH"
	mkdir -p "$CACHE/bin" "$CACHE/etcdbench"
	local bench="$CACHE/bin/etcd-benchmark-$ETCD_MODULE_VERSION"
	if [[ ! -x $bench ]]; then
		log "building etcd's benchmark tool (go.etcd.io/etcd/v3@$ETCD_MODULE_VERSION) in $CACHE/etcdbench"
		(
			cd "$CACHE/etcdbench"
			cat >main.go <<-'EOF'
				// Scratch module: etcd's benchmark tool, built from the module proxy.
				package main

				import (
					"fmt"
					"os"

					"go.etcd.io/etcd/v3/tools/benchmark/cmd"
				)

				func main() {
					if err := cmd.RootCmd.Execute(); err != nil {
						fmt.Fprintln(os.Stderr, err)
						os.Exit(1)
					}
				}
			EOF
			rm -f go.mod go.sum
			go mod init cairnbench/etcdbenchmark >/dev/null 2>&1
			go get "go.etcd.io/etcd/v3@$ETCD_MODULE_VERSION" >/dev/null 2>&1
			go mod tidy >/dev/null 2>&1
			go build -o "$bench" .
		) || die "could not build etcd's benchmark tool (is the Go module proxy reachable?)"
	fi
	BENCH=$bench
	log "building cairn and benchcmp"
	(cd "$ROOT" && go build -o "$CACHE/bin/cairn" ./cmd/cairn && go build -o "$CACHE/bin/benchcmp" ./bench/benchcmp) ||
		die "go build failed"
	CAIRN=$CACHE/bin/cairn
	BENCHCMP=$CACHE/bin/benchcmp
}

# ---------------------------------------------------------------- clusters
# Ports: etcd 23379/23380 +10 +20, Cairn 24379/24380 +10 +20; below Linux's
# ephemeral range (32768+), where a client socket can take a listener's port.
ETCD_CP=(23379 23389 23399) ETCD_PP=(23380 23390 23400)
CAIRN_CP=(24379 24389 24399) CAIRN_PP=(24380 24390 24400)
ETCD_EPS=127.0.0.1:23379,127.0.0.1:23389,127.0.0.1:23399
CAIRN_EPS=127.0.0.1:24379,127.0.0.1:24389,127.0.0.1:24399
declare -A PIDS=() # "<system><i>" -> pid

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
	local p
	for p in "$@"; do
		port_free "$p" || die "port $p on 127.0.0.1 is in use (another cluster still running?)"
	done
}

eps_of() { if [[ $1 == etcd ]]; then echo "$ETCD_EPS"; else echo "$CAIRN_EPS"; fi; }

start_member() { # system i
	local sys=$1 i=$2 dir="$DATA/$1/m$2" logf="$OUT/logs/$1-m$2.log"
	mkdir -p "$dir"
	if [[ $sys == etcd ]]; then
		etcd --name "m$i" --data-dir "$dir" \
			--listen-client-urls "http://127.0.0.1:${ETCD_CP[i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CP[i]}" \
			--listen-peer-urls "http://127.0.0.1:${ETCD_PP[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PP[i]}" \
			--initial-cluster "m0=http://127.0.0.1:${ETCD_PP[0]},m1=http://127.0.0.1:${ETCD_PP[1]},m2=http://127.0.0.1:${ETCD_PP[2]}" \
			--initial-cluster-token cairn-bench --initial-cluster-state new \
			--heartbeat-interval 100 --election-timeout 1000 \
			$( ((PPROF == 0)) || echo --enable-pprof) --logger zap --log-level warn >>"$logf" 2>&1 &
	else
		"$CAIRN" server --name "m$i" --data-dir "$dir" \
			--listen-client "127.0.0.1:${CAIRN_CP[i]}" --listen-peer "127.0.0.1:${CAIRN_PP[i]}" \
			$( ((PPROF == 0)) || echo "--enable-pprof --listen-metrics 127.0.0.1:$((CAIRN_CP[i] + 2))") \
			--initial-cluster "m0=127.0.0.1:${CAIRN_PP[0]},m1=127.0.0.1:${CAIRN_PP[1]},m2=127.0.0.1:${CAIRN_PP[2]}" \
			--tick-interval 100ms --election-ticks 10 --log-level warn >>"$logf" 2>&1 &
	fi
	PIDS[$sys$i]=$!
}

# start_cluster system: start 3 members, wait for a linearizable read; sets
# SERVE_S to the seconds from starting the processes to that read. (Not
# called in $(...): PIDS must be set in this shell.)
start_cluster() {
	local sys=$1 i t0
	if [[ $sys == etcd ]]; then check_ports "${ETCD_CP[@]}" "${ETCD_PP[@]}"; else check_ports "${CAIRN_CP[@]}" "${CAIRN_PP[@]}"; fi
	t0=$(date +%s%N)
	for i in 0 1 2; do start_member "$sys" "$i"; done
	SERVE_S=$("$BENCHCMP" probe -endpoints "$(eps_of "$sys")" -since-ns "$t0" -timeout 180s 2>>"$OUT/logs/probe.log") ||
		die "$sys cluster did not serve a linearizable read (see $OUT/logs/$sys-m*.log)"
	# A quorum answered; every member must be up and serving too, or the
	# benchmark's connections to a dead one hang.
	local ep
	for i in 0 1 2; do
		kill -0 "${PIDS[$sys$i]}" 2>/dev/null || die "$sys member m$i exited (see $OUT/logs/$sys-m$i.log)"
	done
	for ep in $(eps_of "$sys" | tr , ' '); do
		"$BENCHCMP" probe -endpoints "$ep" -timeout 60s >/dev/null 2>>"$OUT/logs/probe.log" ||
			die "$sys member at $ep does not serve linearizable reads (see $OUT/logs/$sys-m*.log)"
	done
}

stop_cluster() { # system
	local sys=$1 i pid n
	for i in 0 1 2; do
		pid=${PIDS[$sys$i]:-}
		[[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true
	done
	for i in 0 1 2; do
		pid=${PIDS[$sys$i]:-}
		[[ -z $pid ]] && continue
		for ((n = 0; n < 300; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		unset "PIDS[$sys$i]"
	done
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	[[ -n ${BENCH_PID:-} ]] && kill -TERM "$BENCH_PID" 2>/dev/null
	stop_cluster etcd
	stop_cluster cairn
	[[ -n ${DATA:-} && -d $DATA ]] && rm -rf "$DATA"
	((rc == 0)) || log "failed (exit $rc); partial results and logs in $OUT"
	exit "$rc"
}

rss_mib() { # system: sum of VmRSS of the 3 members, MiB
	local sys=$1 i kb total=0
	for i in 0 1 2; do
		kb=$(awk '/^VmRSS:/ {print $2}' "/proc/${PIDS[$sys$i]}/status")
		total=$((total + kb))
	done
	awk -v k="$total" 'BEGIN {printf "%.1f", k/1024}'
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# children_cpu_s FILE: user+system CPU seconds of the children this shell
# has waited for, from the output of bash's `times` saved in FILE (its
# second line). The difference across a run is the benchmark tool's own
# CPU. `times` itself must run in this shell, not in a command
# substitution, which would report the subshell's children.
children_cpu_s() {
	awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); n += p[1] * 60 + p[2] } printf "%.3f", n }' "$1"
}

HZ=$(getconf CLK_TCK) # clock ticks per second, the unit of /proc/<pid>/stat's CPU times

# seconds_between A B [PER_SECOND]: (B - A) / PER_SECOND (default 1), to
# two decimals.
seconds_between() { awk -v a="$1" -v b="$2" -v hz="${3:-1}" 'BEGIN {printf "%.2f", (b-a)/hz}'; }

cpu_ticks() { # system: user+system CPU ticks of the 3 members so far
	local sys=$1 i total=0 t
	for i in 0 1 2; do
		t=$(awk '{print $14 + $15}' "/proc/${PIDS[$sys$i]:-0}/stat" 2>/dev/null || echo 0)
		total=$((total + t))
	done
	echo "$total"
}

start_profiles() { # id system rep: CPU profiles of all members, in the background
	local id=$1 sys=$2 rep=$3 i url
	PROF_PIDS=()
	((PPROF > 0 && rep == 1)) || return 0
	mkdir -p "$OUT/prof"
	for i in 0 1 2; do
		if [[ $sys == etcd ]]; then url="http://127.0.0.1:${ETCD_CP[i]}"; else url="http://127.0.0.1:$((CAIRN_CP[i] + 2))"; fi
		curl -sf -o "$OUT/prof/$id.$sys.m$i.pprof" "$url/debug/pprof/profile?seconds=$PPROF" &
		PROF_PIDS+=($!)
		# Cairn only: a 2 s execution trace from 1 s in, for off-CPU time
		# (go tool trace -pprof=syscall|sync|net).
		if [[ $sys == cairn ]]; then
			(sleep 1 && curl -sf -o "$OUT/prof/$id.$sys.m$i.trace" "$url/debug/pprof/trace?seconds=2") &
			PROF_PIDS+=($!)
		fi
	done
}

# ---------------------------------------------------------------- runs
# Workloads: id, title, benchmark-tool arguments (identical for both systems).
RANGE_KEY=benchrangekey
workloads() {
	want a && printf 'a\ta. put, 1 client\t--clients 1 --conns 1 put --total %d --sequential-keys --key-space-size %d --key-size 8 --val-size %d\n' "$N_A" "$N_A" "$VAL"
	want b && printf 'b\tb. put, 100 clients\t--clients 100 --conns 10 put --total %d --sequential-keys --key-space-size %d --key-size 8 --val-size %d\n' "$N_B" "$N_B" "$VAL"
	want c && printf 'c\tc. range 1 key, linearizable\t--clients 100 --conns 10 range %s --consistency=l --total %d\n' "$RANGE_KEY" "$N_READ"
	want d && printf 'd\td. range 1 key, serializable\t--clients 100 --conns 10 range %s --consistency=s --total %d\n' "$RANGE_KEY" "$N_READ"
	want e && printf 'e\te. txn-put, 100 clients\t--clients 100 --conns 10 txn-put --total %d --key-space-size %d --key-size 8 --val-size %d\n' "$N_TXN" "$N_TXN" "$VAL"
	want e2 && printf 'e2\te2. stm CAS (get+txn if)\t--clients 100 --conns 10 stm --total %d --keys %d --keys-per-txn 1 --txn-wr-percent 100 --isolation r --val-size %d\n' "$N_STM" "$N_TXN" "$VAL"
	return 0
}

other_sys() { if [[ $1 == etcd ]]; then echo cairn; else echo etcd; fi; }

# settle: wait until neither cluster is busy (together under 15% of a
# core over a second; idle, with their heartbeats and timers, etcd's three
# members take 2-6% and Cairn's about 1%), at most
# 30 s, so that what one system does after a run (etcd's snapshot at
# 100,000 entries, Cairn's every 10,000, backend commits) does not take
# CPU from the other's next run.
settle() {
	local i a b
	for ((i = 0; i < 30; i++)); do
		a=$(($(cpu_ticks etcd) + $(cpu_ticks cairn)))
		sleep 1
		b=$(($(cpu_ticks etcd) + $(cpu_ticks cairn)))
		((100 * (b - a) < 15 * HZ)) && return 0
	done
	log "the clusters were still busy after 30 s (last second: $(((b - a) * 1000 / HZ)) ms of CPU); running anyway"
}

run_bench() { # id system rep args...
	local id=$1 sys=$2 rep=$3 before after rc=0
	shift 3
	local f="$OUT/raw/$id.$sys.$rep"
	before=$(load_avg)
	start_profiles "$id" "$sys" "$rep"
	local t0 t1 c0 c1 o0 o1 other
	other=$(other_sys "$sys")
	[[ $id == f-load ]] || settle
	t0=$(cpu_ticks "$sys")
	o0=$(cpu_ticks "$other")
	times >"$f.times0"
	echo "benchmark --precise --endpoints $(eps_of "$sys") $*" >"$f.cmd"
	# In the background and waited for, so a signal runs the trap at once
	# and cleanup can end it (BENCH_PID); --foreground keeps it in our
	# process group.
	timeout --foreground "$RUN_TIMEOUT" "$BENCH" --precise --endpoints "$(eps_of "$sys")" "$@" >"$f.out" 2>"$f.err" &
	BENCH_PID=$!
	wait "$BENCH_PID" || rc=$?
	BENCH_PID=""
	t1=$(cpu_ticks "$sys")
	o1=$(cpu_ticks "$other")
	times >"$f.times1"
	c0=$(children_cpu_s "$f.times0")
	c1=$(children_cpu_s "$f.times1")
	rm -f "$f.times0" "$f.times1"
	# cpu.tsv: run, the 3 servers' CPU seconds, the benchmark tool's, and
	# the other (idle) cluster's during the run.
	printf '%s.%s.%s\t%s\t%s\t%s\n' "$id" "$sys" "$rep" "$(seconds_between "$t0" "$t1" "$HZ")" \
		"$(seconds_between "$c0" "$c1")" "$(seconds_between "$o0" "$o1" "$HZ")" >>"$OUT/cpu.tsv"
	((${#PROF_PIDS[@]} == 0)) || wait "${PROF_PIDS[@]}" || log "a profile of $id on $sys failed"
	((rc != 124)) || log "$id on $sys (rep $rep) timed out after $RUN_TIMEOUT s"
	after=$(load_avg)
	printf '%s.%s.%s\t%s\t%s\n' "$id" "$sys" "$rep" "$before" "$after" >>"$OUT/load.tsv"
	if ((rc != 0)) || ! grep -q 'Requests/sec' "$f.out"; then
		log "$id on $sys (rep $rep) failed (exit $rc); see $f.err"
		return 1
	fi
	log "$id $sys rep $rep: $(grep -o 'Requests/sec:.*' "$f.out" | tr -s '\t ' ' ')"
}

run_f() { # system rep
	local sys=$1 rep=$2 rss disk restart rss2 k
	log "f on $sys (rep $rep): loading $N_F keys into a fresh cluster"
	rm -rf "${DATA:?}/$sys"
	start_cluster "$sys"
	run_bench f-load "$sys" "$rep" --clients 100 --conns 10 put --total "$N_F" --sequential-keys \
		--key-space-size "$N_F" --key-size 8 --val-size "$VAL" || return 1
	sleep 5
	rss=$(rss_mib "$sys")
	if ((PPROF > 0)); then
		local i url
		for i in 0 1 2; do
			if [[ $sys == etcd ]]; then url="http://127.0.0.1:${ETCD_CP[i]}"; else url="http://127.0.0.1:$((CAIRN_CP[i] + 2))"; fi
			mkdir -p "$OUT/prof"
			curl -sf -o "$OUT/prof/f.$sys.m$i.heap" "$url/debug/pprof/heap" || log "heap profile of $sys m$i failed"
		done
	fi
	disk=$(du -sm "$DATA/$sys" | cut -f1)
	# Restart the whole cluster RESTARTS times: one restart is mostly an
	# election timeout plus noise; the table shows the median.
	for ((k = 1; k <= RESTARTS; k++)); do
		stop_cluster "$sys"
		start_cluster "$sys"
		restart=$SERVE_S
		sleep 3
		rss2=$(rss_mib "$sys")
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$rep" "$N_F" "$rss" "$restart" "$rss2" "$disk" >>"$OUT/mem.tsv"
		log "f $sys rep $rep: RSS ${rss} MiB after load, disk ${disk} MiB; restart $k: ${restart}s to serving, RSS ${rss2} MiB"
	done
	stop_cluster "$sys"
}

main() {
	install_deps
	mkdir -p "$OUT/raw" "$OUT/logs"
	# Data dirs live in the cache, on the same disk for both systems.
	DATA=$(mktemp -d "$CACHE/data.XXXXXX")
	trap cleanup EXIT INT TERM
	log "results in $OUT"

	{
		echo "command=bench/compare.sh $ARGV"
		echo "mode=$( ((QUICK)) && echo quick || echo full) reps=$REPS f-reps=$FREPS"
		echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
		echo "git=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
		echo "nproc=$(nproc)"
		echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
		echo "mem=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
		echo "go=$(go version | cut -d' ' -f3-)"
		echo "etcd=$(etcd --version 2>/dev/null | tr '\n' ' ')"
		echo "benchmark=go.etcd.io/etcd/v3@$ETCD_MODULE_VERSION tools/benchmark"
		echo "fsync=$("$BENCHCMP" fsync -dir "$DATA" -n 300)"
		# Three members on one disk fsync at the same moments: what each
		# of their WAL appends costs then (see docs/performance.md).
		echo "fsync_3=$("$BENCHCMP" fsync -dir "$DATA" -n 300 -prealloc -parallel 3)"
		echo "fdatasync_3=$("$BENCHCMP" fsync -dir "$DATA" -n 300 -prealloc -parallel 3 -datasync)"
		echo "load_before=$(load_avg)"
	} >"$OUT/env.txt"
	workloads >"$OUT/workloads.tsv"

	local wl=() sys rep id title args order
	mapfile -t wl <"$OUT/workloads.tsv"
	if ((${#wl[@]})); then
		start_cluster etcd
		start_cluster cairn
		local v
		v=$(head -c $VAL /dev/zero | tr '\0' v)
		ETCDCTL_API=3 etcdctl --endpoints "$ETCD_EPS" put "$RANGE_KEY" "$v" >/dev/null || die "etcdctl put on etcd failed"
		ETCDCTL_API=3 etcdctl --endpoints "$CAIRN_EPS" put "$RANGE_KEY" "$v" >/dev/null || die "etcdctl put on cairn failed"
		for ((rep = 1; rep <= REPS; rep++)); do
			# Alternate which system goes first, so neither always runs on a
			# warmer (or more loaded) machine.
			if ((rep % 2)); then order="etcd cairn"; else order="cairn etcd"; fi
			for line in "${wl[@]}"; do
				IFS=$'\t' read -r id title args <<<"$line"
				for sys in $order; do
					# shellcheck disable=SC2086
					run_bench "$id" "$sys" "$rep" $args || FAILED=$((FAILED + 1))
				done
			done
		done
		stop_cluster etcd
		stop_cluster cairn
	fi
	if want f; then
		printf 'f-load\tf. load %s keys, 100 clients\t(put, see run_f)\n' "$(numfmt --to=si "$N_F")" >>"$OUT/workloads.tsv"
		for ((rep = 1; rep <= FREPS; rep++)); do
			if ((rep % 2)); then order="etcd cairn"; else order="cairn etcd"; fi
			for sys in $order; do run_f "$sys" "$rep" || die "workload f failed on $sys"; done
		done
	fi
	echo "load_after=$(load_avg)" >>"$OUT/env.txt"
	log "load average before: $(sed -n 's/^load_before=//p' "$OUT/env.txt"), after: $(load_avg) (other processes on this machine add noise)"
	"$BENCHCMP" report -dir "$OUT" || die "report failed"
	log "wrote $OUT/{table.md,results.csv,results.json,plot.png}; raw outputs in $OUT/raw"
	((FAILED == 0)) || die "$FAILED benchmark runs failed (left out of the table); see $OUT/raw/*.err"
}

main
