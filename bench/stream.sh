#!/usr/bin/env bash
# Issue 5's benchmark: a streaming install of the 1 GiB raw image's verity
# bundle from a local nginx against `curl -o /dev/null` of the same bundle
# from the same nginx, in one run, twice: over plain loopback (CPU-bound:
# what the install costs beyond moving bytes) and over loopback shaped to a
# 400 Mbit/s link with tbf (network-bound: does the install keep the link
# as busy as curl does).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
install_fixture
RATE=${ROTA_BENCH_LINK:-400mbit}

# nginx serving the bundles.
N=$W/nginx
mkdir -p "$N"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$N/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $N/nginx.pid;
error_log $N/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $N/body;
  proxy_temp_path $N/proxy;
  fastcgi_temp_path $N/fastcgi;
  uwsgi_temp_path $N/uwsgi;
  scgi_temp_path $N/scgi;
  sendfile on;
  server {
    listen 127.0.0.1:$port;
    root $W;
  }
}
CONF
nginx -c "$N/nginx.conf" -p "$N" &
nginx_pid=$!
shaped=0
cleanup() {
  kill "$nginx_pid" 2>/dev/null || true
  [ "$shaped" = 1 ] && tc qdisc del dev lo root 2>/dev/null || true
}
trap cleanup EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.1; done
URL=http://127.0.0.1:$port/verity.raucb
SIZE=$(stat -c %s "$W/verity.raucb")
ROTA_INSTALL=("$ROTA" install --conf "$W/system.conf" --override-boot-slot=A)

run_pair() {
  local tag=$1
  measure "curl_$tag" 3 "" curl -s -o /dev/null "$URL"
  measure "rota_$tag" 3 "$reset" "${ROTA_INSTALL[@]}" "$URL"
  check_installed "rota install $URL"
}

echo "Streaming from nginx, loopback (3 runs each):" >&2
run_pair loopback
echo "Streaming from nginx, loopback shaped to $RATE (3 runs each):" >&2
tc qdisc add dev lo root tbf rate "$RATE" burst 256kb latency 50ms
shaped=1
run_pair link
tc qdisc del dev lo root
shaped=0

mibps() { echo "scale=1; $SIZE / 1048576 / $1" | bc -l; }
cat <<MD
### Streaming install from nginx (issue 5)

The $MIB MiB raw image's verity bundle ($(bundle_mib "$W/verity.raucb") MiB) from nginx on 127.0.0.1
into a file-backed slot (as in the install benchmark), against \`curl -o /dev/null\` of the same
bundle from the same nginx. Throughput = bundle size / wall time; the install also inflates,
verifies, writes, syncs and reads back the image. $(nproc) cores. Command: \`bench/run stream\`.

| link | operation | time | throughput | ratio to curl | peak memory |
|---|---|---:|---:|---:|---:|
| loopback | \`curl -o /dev/null\` | ${RESULT_curl_loopback_S} s | $(mibps "$RESULT_curl_loopback_S") MiB/s | 1.00 | $(mib "$RESULT_curl_loopback_KB") MiB |
| loopback | **\`rota install URL\`** | ${RESULT_rota_loopback_S} s | $(mibps "$RESULT_rota_loopback_S") MiB/s | $(ratio "$RESULT_curl_loopback_S" "$RESULT_rota_loopback_S") | $(mib "$RESULT_rota_loopback_KB") MiB |
| $RATE (tbf) | \`curl -o /dev/null\` | ${RESULT_curl_link_S} s | $(mibps "$RESULT_curl_link_S") MiB/s | 1.00 | $(mib "$RESULT_curl_link_KB") MiB |
| $RATE (tbf) | **\`rota install URL\`** | ${RESULT_rota_link_S} s | $(mibps "$RESULT_rota_link_S") MiB/s | $(ratio "$RESULT_curl_link_S" "$RESULT_rota_link_S") | $(mib "$RESULT_rota_link_KB") MiB |
MD
