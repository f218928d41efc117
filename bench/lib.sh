# Helpers for the benchmark scripts: repeated timing with peak memory.

# measure NAME RUNS PREPARE COMMAND...: runs PREPARE (a shell snippet, may be
# empty) then COMMAND, RUNS times; records the median wall time (seconds) and
# the largest peak RSS (KiB) as $RESULT_<NAME>_S / $RESULT_<NAME>_KB.
measure() {
  local name=$1 runs=$2 prep=$3; shift 3
  local times=() peak=0 i t0 t1 rss
  for ((i = 0; i < runs; i++)); do
    [ -n "$prep" ] && bash -c "$prep"
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$BENCH_DIR/.rss" "$@" >/dev/null 2>"$BENCH_DIR/.err" || { cat "$BENCH_DIR/.err" >&2; return 1; }
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
    rss=$(tail -n1 "$BENCH_DIR/.rss")
    ((rss > peak)) && peak=$rss
  done
  local median
  median=$(median "${times[@]}")
  printf -v "RESULT_${name}_S" '%.2f' "$median"
  printf -v "RESULT_${name}_KB" '%s' "$peak"
  printf '  %-22s %8.2f s  %8.1f MiB peak  (%d runs)\n' "$name" "$median" "$(echo "$peak / 1024" | bc -l)" "$runs" >&2
}

# median X...: the median of the numbers given.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; }
mib() { echo "scale=1; $1 / 1024" | bc -l | sed 's/^\./0./'; }

# bench_pki DIR: the test PKI in DIR/pki (made once); sets K (keyring)
# and SIGN (the release signer's options).
bench_pki() {
  [ -f "$1/pki/keyring.pem" ] || sh tests/pki/make-pki.sh "$1/pki" >/dev/null
  K=$1/pki/keyring.pem
  SIGN=(--cert "$1/pki/release.pem" --key "$1/pki/release.key" --intermediate "$1/pki/inter.pem")
}

# ab_system_conf DIR SLOT_TYPE STATUS_LINE KEYRING: DIR/system.conf of a GRUB
# A/B device with slots DIR/slot-a (booted A) and DIR/slot-b of SLOT_TYPE,
# status kept as STATUS_LINE says (statusfile=… or data-directory=…).
ab_system_conf() {
  cat > "$1/system.conf" <<CONF
[system]
compatible=rota-bench
bootloader=grub
grubenv=$1/grubenv
$3
mountprefix=$1/mnt

[keyring]
path=$4

[slot.rootfs.0]
device=$1/slot-a
type=$2
bootname=A

[slot.rootfs.1]
device=$1/slot-b
type=$2
bootname=B
CONF
  mkdir -p "$1/mnt"
}

# raw_bundles CONTENT OUT: verity and plain bundles OUT/verity.raucb and
# OUT/plain.raucb of CONTENT/rootfs.img (needs $ROTA and $SIGN).
raw_bundles() {
  local fmt
  for fmt in verity plain; do
    printf '[update]\ncompatible=rota-bench\nversion=1.0\n\n[bundle]\nformat=%s\n\n[image.rootfs]\nfilename=rootfs.img\n' \
      "$fmt" > "$1/manifest.raucm"
    "$ROTA" bundle "${SIGN[@]}" "$1" "$2/$fmt.raucb" 2>/dev/null
  done
  rm "$1/manifest.raucm"
}

# random_bundles DIR MIB: a random (incompressible) image of MIB MiB in
# DIR/content/rootfs.img and its verity and plain bundles in DIR (made once).
random_bundles() {
  [ -f "$1/.done" ] && return
  echo "Generating a $2 MiB random image" >&2
  rm -rf "$1"
  mkdir -p "$1/content"
  head -c "${2}M" /dev/urandom > "$1/content/rootfs.img"
  raw_bundles "$1/content" "$1" >&2
  touch "$1/.done"
}

# serve DIR ROOT: start_nginx, and on exit stop it and remove the traffic
# shaping of lo when $shaped is 1.
serve() {
  start_nginx "$1" "$2"
  shaped=0
  trap 'kill "$nginx_pid" 2>/dev/null || true; [ "$shaped" = 1 ] && tc qdisc del dev lo root 2>/dev/null || true' EXIT
}

# install_fixture: the device and bundles both install benchmarks use, in
# $W=$BENCH_DIR/install: a ROTA_BENCH_IMAGE_MIB (default 1024) MiB raw image
# $IMG (half random, a quarter zeros, a quarter log text), verity and plain
# bundles of it, a GRUB A/B device ($W/system.conf, booted A, target file
# $W/slot-b) and $reset, a shell snippet that empties the target and resets
# status and bootloader state.
install_fixture() {
W=$BENCH_DIR/install
MIB=${ROTA_BENCH_IMAGE_MIB:-1024}
mkdir -p "$W"
bench_pki "$W"

if [ ! -f "$W/content-$MIB/.done" ]; then
  echo "Generating a $MIB MiB raw image (half random, a quarter zeros, a quarter log text)" >&2
  rm -rf "$W"/content-* "$W"/*.raucb
  mkdir -p "$W/content-$MIB"
  set +o pipefail # head closes the pipes of yes on purpose
  { head -c $((MIB / 2))M /dev/urandom; head -c $((MIB / 4))M /dev/zero;
    yes 'Nov 22 04:49:18 charger evse[812]: session 42 energy=12.34kWh state=Charging' | head -c $((MIB / 4))M; } \
    > "$W/content-$MIB/rootfs.img"
  set -o pipefail
  raw_bundles "$W/content-$MIB" "$W"
  touch "$W/content-$MIB/.done"
fi
IMG=$W/content-$MIB/rootfs.img

# One device for both tools: GRUB environment, booted slot A, target B.
ab_system_conf "$W" raw "statusfile=$W/status.raucs" "$K"
: > "$W/slot-a"
# Every run starts from an empty target file, a fresh status and a clean
# GRUB environment; dirty pages of the previous run are flushed first.
reset="rm -f $W/slot-b $W/status.raucs $W/grubenv; : > $W/slot-b;
  grub-editenv $W/grubenv set ORDER='A B' A_OK=1 B_OK=1 A_TRY=0 B_TRY=0; sync"
cat "$IMG" "$W/verity.raucb" "$W/plain.raucb" > /dev/null
bundle_mib() { mib $(($(stat -c %s "$1") / 1024)); }
echo "Image $MIB MiB; verity bundle $(bundle_mib "$W/verity.raucb") MiB, plain $(bundle_mib "$W/plain.raucb") MiB" >&2
}

# check_installed WHAT: fails unless the target slot holds the image after WHAT.
check_installed() {
  cmp -s -n "$(stat -c %s "$IMG")" "$IMG" "$W/slot-b" || { echo "slot B does not hold the image after $1" >&2; exit 1; }
}

# start_nginx DIR ROOT: nginx (one worker, sendfile) serving ROOT on a free
# port of 127.0.0.1, its files in DIR, logging the bytes of every response
# to DIR/access.log; sets $port and $nginx_pid and waits until it answers.
start_nginx() {
  local dir=$1 root=$2
  mkdir -p "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 256; }
http {
  log_format sent '\$bytes_sent';
  access_log $dir/access.log sent;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  sendfile on;
  server {
    listen 127.0.0.1:$port;
    root $root;
  }
}
CONF
  nginx -c "$dir/nginx.conf" -p "$dir" &
  nginx_pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.1; done
}
