#!/usr/bin/env bash
# Sidecar vs nginx, side by side in one run, on the same cores.
#
# Starts on loopback: a fast upstream (its own nginx, answering 200 "ok" from memory), nginx as a reverse
# proxy injecting a static bearer (the best a proxy can do without refresh logic), and the
# sidecar (release build) with a valid cached token. Then drives each with wrk, interleaved
# A/B/C rounds, and prints requests/s, p50 and p99 for direct, nginx and sidecar, with ratios.
#
#   bash benches/sidecar_vs_nginx.sh [SECONDS_PER_ROUND] [ROUNDS] [CONNECTIONS]
#
# Installs nginx and wrk from Debian's packages when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-64}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin oauth-refresh-proxy
BIN=target/release/oauth-refresh-proxy

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "$WORK/up/nginx.pid" "$WORK/ng/nginx.pid"; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NG=$(free_port)

# The upstream runs in its own nginx instance (one worker), so that both proxies under test
# share the cores with the same separate upstream process.
mkdir -p "$WORK/up" "$WORK/ng"
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
cat > "$WORK/ng/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/ng/nginx.pid;
error_log $WORK/ng/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream api { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NG;
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
"$NGINX" -c "$WORK/up/nginx.conf" -p "$WORK/up"
"$NGINX" -c "$WORK/ng/nginx.conf" -p "$WORK/ng"

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
RUST_LOG=warn "$BIN" serve --config "$WORK/proxy.toml" > "$WORK/sidecar.out" 2> "$WORK/sidecar.err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q "proxy listening" "$WORK/sidecar.out" 2>/dev/null && break; sleep 0.1; done
SC=$(sed -n 's#proxy listening on http://##p' "$WORK/sidecar.out" | head -1)
[ -n "$SC" ] || { echo "sidecar did not start"; cat "$WORK/sidecar.err"; exit 1; }

declare -A URL=( [direct]="http://127.0.0.1:$UP/user" [nginx]="http://127.0.0.1:$NG/github/user" [sidecar]="http://$SC/github/user" )
for t in direct nginx sidecar; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$t]}")
  [ "$code" = 200 ] || { echo "$t answered $code"; exit 1; }
  wrk -t2 -c"$CONNS" -d2s "${URL[$t]}" >/dev/null   # warm-up
done

to_us() { # wrk latency like 512.00us, 1.23ms, 2.00s -> microseconds
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

declare -A RPS P50 P99
for r in $(seq 1 "$ROUNDS"); do
  for t in direct nginx sidecar; do
    out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "${URL[$t]}")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    RPS[$t]="${RPS[$t]:-} $rps"; P50[$t]="${P50[$t]:-} $p50"; P99[$t]="${P99[$t]:-} $p99"
    printf 'round %d %-8s %10.0f req/s  p50 %8.0f us  p99 %8.0f us\n' "$r" "$t" "$rps" "$p50" "$p99"
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "medians over $ROUNDS rounds of ${SECS}s, wrk -t2 -c$CONNS, proxy nginx 2 workers, sidecar 2 tokio workers, upstream nginx 1 worker, $(nproc) cores"
printf '%-8s %12s %10s %10s %14s %14s\n' target "req/s" "p50 us" "p99 us" "rps vs nginx" "p99 vs nginx"
NR=$(median "${RPS[nginx]}"); N99=$(median "${P99[nginx]}")
for t in direct nginx sidecar; do
  rps=$(median "${RPS[$t]}"); p50=$(median "${P50[$t]}"); p99=$(median "${P99[$t]}")
  printf '%-8s %12.0f %10.0f %10.0f %14.2f %14.2f\n' "$t" "$rps" "$p50" "$p99" \
    "$(awk -v a="$rps" -v b="$NR" 'BEGIN{print a/b}')" "$(awk -v a="$p99" -v b="$N99" 'BEGIN{print a/b}')"
done
