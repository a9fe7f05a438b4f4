# bench/lib.sh: what the Cairn-only scripts in bench/ share (b-counts.sh,
# trace-a.sh, pair.sh): finding etcd's benchmark tool, starting a
# 3-member Cairn cluster on loopback and waiting until it serves, and
# reading the servers' CPU time. Sourced, not run; the caller sets
# ROOT, CACHE and NAME (its own name, for messages) first.

# Numbers are read back from awk and bash's `times`: a decimal point,
# whatever the user's locale.
export LC_ALL=C

# need_tools: the benchmark tool (built by compare.sh), etcdctl and curl,
# or a message naming what to install. Sets BENCH.
need_tools() {
	BENCH=$(ls "$CACHE"/bin/etcd-benchmark-* 2>/dev/null | head -1)
	[[ -x $BENCH ]] || { echo "$NAME: no benchmark tool in $CACHE/bin: run bench/compare.sh --quick first" >&2; exit 1; }
	command -v etcdctl >/dev/null || { echo "$NAME: needs etcdctl (apt-get install etcd-client)" >&2; exit 1; }
	command -v curl >/dev/null || { echo "$NAME: needs curl (apt-get install curl)" >&2; exit 1; }
}

# start_cairn BIN DIR BASE [FLAG...]: start members m0..m2 of a cluster
# with data and logs under DIR; member i listens for clients on BASE+10i,
# for peers on BASE+10i+1 and serves metrics on BASE+10i+2 (compare.sh's
# ports for BASE 24379). Appends the members' pids to PIDS and sets EPS
# (the client endpoints, comma-separated). FLAGs go to every member.
start_cairn() {
	local bin=$1 dir=$2 base=$3 i
	shift 3
	local cluster="m0=127.0.0.1:$((base + 1)),m1=127.0.0.1:$((base + 11)),m2=127.0.0.1:$((base + 21))"
	EPS=""
	for i in 0 1 2; do
		"$bin" server --name "m$i" --data-dir "$dir/m$i" --listen-client "127.0.0.1:$((base + 10 * i))" \
			--listen-peer "127.0.0.1:$((base + 10 * i + 1))" --listen-metrics "127.0.0.1:$((base + 10 * i + 2))" \
			--initial-cluster "$cluster" --tick-interval 100ms --election-ticks 10 --log-level warn "$@" >"$dir/m$i.log" 2>&1 &
		PIDS+=($!)
		EPS+=${EPS:+,}127.0.0.1:$((base + 10 * i))
	done
	local t
	for ((t = 0; t < 150; t++)); do
		ETCDCTL_API=3 timeout 5 etcdctl --endpoints "$EPS" --command-timeout 2s put "$NAME-warmup" x >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "$NAME: the cluster in $dir did not serve a put within 30 s; logs in $dir/m*.log" >&2
	exit 1
}

# cpu_ticks PID...: user+system CPU of the processes, in clock ticks.
cpu_ticks() {
	local p s=0
	for p in "$@"; do
		s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$s"
}
