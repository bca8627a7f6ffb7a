#!/usr/bin/env bash
# Sidecar vs nginx and HAProxy, side by side in one run, on the same cores.
#
# Starts on loopback: a fast upstream (its own nginx, answering 200 "ok" from memory); nginx
# (1 and 2 workers) and HAProxy (1 and 2 threads, `http-reuse always`) as reverse proxies
# injecting a static bearer (the best a proxy can do without refresh logic); and the sidecar
# (release build) with a valid cached token. Then drives each with wrk in interleaved rounds
# and prints requests/s, p50 and p99 per target, with ratios against the best anchor (the
# fastest of the four nginx/HAProxy set-ups by median requests/s).
#
#   bash benches/sidecar_vs_nginx.sh [SECONDS_PER_ROUND] [ROUNDS] [CONNECTIONS]
#
# BEFORE=path/to/an/older/oauth-refresh-proxy adds that binary as target `before`, run with the
# same config (for a before/after in one run). WORKERS=n sets the sidecar's [server] workers.
#
# Target `floor` is examples/hyper_floor.rs (FLOOR=path, or built here): the thinnest hyper
# reverse proxy doing what nginx and HAProxy do here (prefix stripped, Host and a static bearer
# set), one single-threaded runtime and SO_REUSEPORT listener per core, no pool, no limits. It
# is not an anchor: it shows how far a proxy built on hyper can go on this machine
# (BENCHMARKS.md section 12).
#
# CALLGRIND=1 instead counts the sidecar's instructions per proxied request (BENCHMARKS.md
# section 9): the sidecar (`workers = 1`, BIN=path or the release build) under
# `valgrind --tool=callgrind`, twice: once driven by `wrk -t1 -c4 -d${SECONDS_PER_ROUND}s`
# after one request, once with the one request and as long idle; the difference divided by
# the requests wrk got answered, in total and per function (inclusive, top 40). The profiles
# stay in CALLGRIND_OUT (default /tmp/orp-callgrind). CALLGRIND=floor counts the floor's
# instead (one worker), the same way.
# Installs nginx, haproxy and wrk from Debian's packages when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-64}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin oauth-refresh-proxy
  BIN=target/release/oauth-refresh-proxy
fi
if [ -z "${FLOOR:-}" ]; then
  cargo build --release --quiet --example hyper_floor
  FLOOR=target/release/examples/hyper_floor
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "$WORK"/*/nginx.pid "$WORK"/*/haproxy.pid; do [ -f "$p" ] && kill $(cat "$p") 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)

# The upstream runs in its own nginx instance (one worker), so that the proxies under test
# share the cores with the same separate upstream process.
mkdir -p "$WORK/up"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { return 200 "ok"; }
  }
}
NGINX
"$NGINX" -c "$WORK/up/nginx.conf" -p "$WORK/up"

declare -A URL
# nginx as a reverse proxy with N workers.
start_nginx() { # name workers
  local dir="$WORK/$1" port; port=$(free_port); mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGINX
worker_processes $2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream api { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$port;
    location /github/ {
      proxy_pass http://api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host api.github.com;
      proxy_set_header Authorization "Bearer static-token-for-the-benchmark";
    }
  }
}
NGINX
  "$NGINX" -c "$dir/nginx.conf" -p "$dir"
  URL[$1]="http://127.0.0.1:$port/github/user"
}
# HAProxy with N threads, keeping upstream connections for any client (http-reuse always).
start_haproxy() { # name threads
  local dir="$WORK/$1" port; port=$(free_port); mkdir -p "$dir"
  cat > "$dir/haproxy.cfg" <<HAPROXY
global
  nbthread $2
  maxconn 4096
  pidfile $dir/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  http-request set-header Authorization "Bearer static-token-for-the-benchmark"
  http-request set-header Host api.github.com
  http-request set-path %[path,regsub(^/github/,/)]
  server up 127.0.0.1:$UP
HAPROXY
  "$HAPROXY" -D -f "$dir/haproxy.cfg"
  URL[$1]="http://127.0.0.1:$port/github/user"
}
if [ -z "${CALLGRIND:-}" ]; then
  start_nginx nginx1 1
  start_nginx nginx2 2
  start_haproxy haproxy1 1
  start_haproxy haproxy2 2
fi
URL[direct]="http://127.0.0.1:$UP/user"

cat > "$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:0"
admin_listen = ""
[refresh]
backend_url = "http://127.0.0.1:9"   # never called: the cached token stays valid
refresh_ahead = "1m"
[[route]]
prefix = "/github"
upstream = "http://127.0.0.1:$UP"
provider = "github"
default_account = "bench"
[[account]]
provider = "github"
id = "bench"
refresh_token = "ghr_benchmark-refresh-token"
access_token = "ghu_benchmark-access-token"
expires_at = $(( $(date +%s) + 86400 ))
TOML
[ -n "${CALLGRIND:-}" ] && WORKERS=1
[ -n "${WORKERS:-}" ] && printf '[server]\nworkers = %d\n' "$WORKERS" >> "$WORK/proxy.toml"

if [ -n "${CALLGRIND:-}" ]; then
  OUT=${CALLGRIND_OUT:-/tmp/orp-callgrind}
  mkdir -p "$OUT"
  # One profile: the sidecar under callgrind, one request, then `load` (wrk or sleep), then stop.
  profile() { # name load...
    local name=$1; shift
    local cmd=("$BIN" serve --config "$WORK/proxy.toml")
    [ "$CALLGRIND" = floor ] && cmd=("$FLOOR" 127.0.0.1:0 "127.0.0.1:$UP" 1)
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out" \
      "${cmd[@]}" > "$WORK/$name.log" 2> "$WORK/$name.err" &
    local pid=$!
    for _ in $(seq 1 600); do grep -Eq "(proxy|floor) listening" "$WORK/$name.log" 2>/dev/null && break; sleep 0.1; done
    local addr; addr=$(sed -En 's#(proxy|floor) listening on http://##p' "$WORK/$name.log" | head -1)
    [ -n "$addr" ] || { echo "$name did not start"; cat "$WORK/$name.err"; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/github/user")
    [ "$code" = 200 ] || { echo "$name answered $code"; exit 1; }
    "$@" "http://$addr/github/user" > "$OUT/$name.load"
    kill -TERM "$pid"; wait "$pid" || true
  }
  idle() { sleep "$SECS"; }
  profile idle idle
  profile load wrk -t1 -c4 -d"${SECS}s"
  cat "$OUT/load.load"
  if grep -q "Non-2xx" "$OUT/load.load"; then echo "wrk saw errors"; exit 1; fi
  REQS=$(awk '/requests in/ {print $1}' "$OUT/load.load")
  total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }
  echo
  echo "requests: $REQS; instructions: load $(total "$OUT/load.out"), idle $(total "$OUT/idle.out")"
  echo "instructions per proxied request: $(( ($(total "$OUT/load.out") - $(total "$OUT/idle.out")) / REQS ))"
  for n in idle load; do
    callgrind_annotate --auto=no --threshold=100 "$OUT/$n.out" > "$OUT/$n.self.txt" 2>/dev/null
    callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$OUT/$n.out" > "$OUT/$n.incl.txt" 2>/dev/null
  done
  python3 - "$OUT" "$REQS" <<'PY'
import re, sys
out, reqs = sys.argv[1], int(sys.argv[2])
def read(path, inclusive):
    # "1,234 (12.3%)  file:function [object]"; a function split over files (inlined parts):
    # self costs summed, inclusive ones the largest (each part counts the whole call tree).
    costs = {}
    for line in open(path, errors="replace"):
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+([^=<>\s].*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r" \[[^\]]*\]$", "", m.group(2))
        name = re.sub(r"^[^:]*:", "", name, count=1)
        n = int(m.group(1).replace(",", ""))
        costs[name] = max(costs.get(name, 0), n) if inclusive else costs.get(name, 0) + n
    return costs
for kind, top in (("incl", 40), ("self", 30)):
    incl = kind == "incl"
    idle, load = read(f"{out}/idle.{kind}.txt", incl), read(f"{out}/load.{kind}.txt", incl)
    rows = sorted(((v - idle.get(k, 0)) / reqs, k) for k, v in load.items())
    label = "inclusive" if kind == "incl" else "self"
    print(f"\n{label} instructions per request (load minus idle), top {top}:")
    for per, name in reversed(rows[-top:]):
        print(f"{per:10.0f}  {name[:160]}")
PY
  exit 0
fi
start_sidecar() { # name binary
  RUST_LOG=warn "$2" serve --config "$WORK/proxy.toml" > "$WORK/$1.out" 2> "$WORK/$1.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do grep -q "proxy listening" "$WORK/$1.out" 2>/dev/null && break; sleep 0.1; done
  local addr; addr=$(sed -n 's#proxy listening on http://##p' "$WORK/$1.out" | head -1)
  [ -n "$addr" ] || { echo "$1 did not start"; cat "$WORK/$1.err"; exit 1; }
  URL[$1]="http://$addr/github/user"
}
start_sidecar sidecar "$BIN"
"$FLOOR" 127.0.0.1:0 "127.0.0.1:$UP" > "$WORK/floor.out" 2> "$WORK/floor.err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q "floor listening" "$WORK/floor.out" 2>/dev/null && break; sleep 0.1; done
FLOOR_ADDR=$(sed -n 's#floor listening on http://##p' "$WORK/floor.out" | head -1)
[ -n "$FLOOR_ADDR" ] || { echo "floor did not start"; cat "$WORK/floor.err"; exit 1; }
URL[floor]="http://$FLOOR_ADDR/github/user"
TARGETS=(direct nginx1 nginx2 haproxy1 haproxy2 floor sidecar)
ANCHORS=(nginx1 nginx2 haproxy1 haproxy2)
if [ -n "${BEFORE:-}" ]; then
  start_sidecar before "$BEFORE"
  TARGETS+=(before)
fi

for t in "${TARGETS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]}")
  [ "$code" = 200 ] || { echo "$t answered $code"; exit 1; }
  wrk -t2 -c"$CONNS" -d2s "${URL[$t]}" >/dev/null   # warm-up
done

to_us() { # wrk latency like 512.00us, 1.23ms, 2.00s -> microseconds
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

declare -A RPS P50 P99
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "${URL[$t]}")
    # A target answering errors is not measured: quick errors would pass for throughput.
    if grep -q "Non-2xx" <<<"$out"; then echo "$t answered errors in round $r:"; echo "$out"; exit 1; fi
    errors=$(awk '/Socket errors:/ {sub(/.*Socket errors: /, ""); print}' <<<"$out")
    [ -z "$errors" ] || echo "round $r $t socket errors: $errors"
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    RPS[$t]="${RPS[$t]:-} $rps"; P50[$t]="${P50[$t]:-} $p50"; P99[$t]="${P99[$t]:-} $p99"
    printf 'round %d %-8s %10.0f req/s  p50 %8.0f us  p99 %8.0f us\n' "$r" "$t" "$rps" "$p50" "$p99"
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
best=""; best_rps=0
for t in "${ANCHORS[@]}"; do
  rps=$(median "${RPS[$t]}")
  if awk -v a="$rps" -v b="$best_rps" 'BEGIN{exit !(a>b)}'; then best=$t; best_rps=$rps; fi
done
B99=$(median "${P99[$best]}")
echo
echo "medians over $ROUNDS rounds of ${SECS}s, wrk -t2 -c$CONNS; upstream nginx 1 worker; sidecar workers ${WORKERS:-default (cores)}; $(nproc) cores; best anchor: $best"
printf '%-9s %12s %10s %10s %13s %13s\n' target "req/s" "p50 us" "p99 us" "rps vs best" "p99 vs best"
for t in "${TARGETS[@]}"; do
  rps=$(median "${RPS[$t]}"); p50=$(median "${P50[$t]}"); p99=$(median "${P99[$t]}")
  printf '%-9s %12.0f %10.0f %10.0f %13.2f %13.2f\n' "$t" "$rps" "$p50" "$p99" \
    "$(awk -v a="$rps" -v b="$best_rps" 'BEGIN{print a/b}')" "$(awk -v a="$p99" -v b="$B99" 'BEGIN{print a/b}')"
done
