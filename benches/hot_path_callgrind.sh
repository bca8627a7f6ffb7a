#!/usr/bin/env bash
# Instructions the layer and tower-http's AddAuthorization add per request, counted by callgrind
# (BENCHMARKS.md section 1): `hot_path_interleaved` runs each variant alone
# (HOT_PATH_ONLY=bare|auth|layer|floor, 20 000 GET then 20 000 POST of 1 KiB) under
# `valgrind --tool=callgrind`; a variant's total minus the bare one's, divided by the 40 000
# requests, is what it adds. Instruction counts do not move with the machine's load. `floor` is
# the bench's replay floor: the least a layer able to replay must add (its module docs).
#
#   bash benches/hot_path_callgrind.sh [BENCH_BINARY]
#
# Without an argument the bench is built (release) and its binary used. HOT_PATH_STREAM=1
# sends the POST body streamed (`StreamBody`) instead of `Full<Bytes>`; HOT_PATH_HEADERS=1 gives
# every request the four headers of a typical GitHub client (the bench's `CLIENT_HEADERS`). Needs valgrind
# (installed from Debian's packages when missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind > /dev/null || { apt-get update -qq && apt-get install -y -qq valgrind > /dev/null; }
BIN=${1:-}
if [ -z "$BIN" ]; then
  BIN=$(cargo bench --bench hot_path_interleaved --no-run --message-format=json 2> /dev/null \
    | sed -n 's/.*"executable":"\([^"]*hot_path_interleaved[^"]*\)".*/\1/p' | tail -1)
fi
[ -x "$BIN" ] || { echo "no bench binary: $BIN" >&2; exit 1; }
OUT=$(mktemp -d)
total() {
  HOT_PATH_ONLY=$1 valgrind --tool=callgrind --callgrind-out-file="$OUT/$1.out" "$BIN" 1 20000 > /dev/null 2>&1
  callgrind_annotate "$OUT/$1.out" 2> /dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
bare=$(total bare); auth=$(total auth); layer=$(total layer); floor=$(total floor)
rm -rf "$OUT"
echo "body: $([ -n "${HOT_PATH_STREAM:-}" ] && echo streamed || echo 'Full<Bytes>');" \
  "headers: $([ -n "${HOT_PATH_HEADERS:-}" ] && echo 'four client headers' || echo none)"
echo "AddAuthorization adds $(( (auth - bare) / 40000 )) instructions per request"
echo "the layer adds $(( (layer - bare) / 40000 )) instructions per request"
awk -v a=$((auth - bare)) -v l=$((layer - bare)) 'BEGIN { printf "ratio %.2f\n", l / a }'
echo "the replay floor adds $(( (floor - bare) / 40000 )) instructions per request"
awk -v a=$((auth - bare)) -v f=$((floor - bare)) 'BEGIN { printf "replay floor ratio %.2f\n", f / a }'
