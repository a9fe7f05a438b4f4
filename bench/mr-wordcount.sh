#!/bin/sh
# Word-count throughput of `cairn mr run` with 1 and 2 workers next to a
# plain Go word count on the same generated text, in the same run.
# Usage: bench/mr-wordcount.sh [SIZE]   (default 1GiB; e.g. 256MiB)
set -eu
cd "$(dirname "$0")/.."
size="${1:-1GiB}"
bin="$(mktemp -d)/cairn"
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./cmd/cairn
echo "command: bench/mr-wordcount.sh $size"
echo "host: $(uname -srm); $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //'); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
"$bin" mr bench --size "$size" --workers 1,2
