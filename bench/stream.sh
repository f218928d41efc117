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
serve "$W/nginx" "$W"
URL=http://127.0.0.1:$port/verity.raucb
SIZE=$(stat -c %s "$W/verity.raucb")
ROTA_INSTALL=("$ROTA" install --conf "$W/system.conf" --override-boot-slot=A)

run_pair() {
  local tag=$1
  measure "curl_$tag" 3 "" curl -s -o /dev/null "$URL"
  measure "rota_$tag" 3 "$reset" "${ROTA_INSTALL[@]}" "$URL"
  # The share of the bundle the last run fetched, as the install logged it.
  printf -v "FETCHED_$tag" '%s' "$(grep -o '[0-9.]*% of the full bundle' "$BENCH_DIR/.err" | tail -n1 | cut -d'%' -f1)"
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

# Adaptive updates (block-hash-index): a random image of ROTA_BENCH_ADAPTIVE_MIB
# (default 256) MiB in the booted slot A, the same image with 1, 5 and 25 %
# of its blocks changed (in 128 KiB runs at random places) streamed into B
# from the same nginx. Bytes, not time: what crossed the network against the
# bundle size and against the changed bytes.
AMIB=${ROTA_BENCH_ADAPTIVE_MIB:-256}
A=$W/adaptive
mkdir -p "$A"
if [ ! -f "$A/.done-$AMIB" ]; then
  rm -rf "${A:?}"/*
  head -c "${AMIB}M" /dev/urandom > "$A/base.img"
  for pct in 1 5 25; do
    mkdir -p "$A/c$pct"
    python3 - "$A/base.img" "$A/c$pct/rootfs.img" "$pct" <<'PY'
import os, random, sys
src, dst, pct = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = bytearray(open(src, 'rb').read())
run = 128 * 1024
runs = len(data) // run
rng = random.Random(pct)
for r in rng.sample(range(runs), runs * pct // 100):
    data[r * run:(r + 1) * run] = os.urandom(run)
open(dst, 'wb').write(data)
PY
    printf '[update]\ncompatible=rota-bench\nversion=2.0\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.img\nadaptive=block-hash-index\n' \
      > "$A/c$pct/manifest.raucm"
    rm -f "$W/adaptive-$pct.raucb"
    "$ROTA" bundle "${SIGN[@]}" "$A/c$pct" "$W/adaptive-$pct.raucb" >/dev/null 2>&1
    rm -f "$A/c$pct/manifest.raucm"
  done
  touch "$A/.done-$AMIB"
fi
sed -e "s|^device=$W/slot-a|device=$A/slot-a|" -e "s|^device=$W/slot-b|device=$A/slot-b|" \
  -e "s|^statusfile=.*|data-directory=$A/data|" "$W/system.conf" > "$A/system.conf"
echo "Adaptive updates from nginx ($AMIB MiB random image, 1/5/25 % changed):" >&2
for pct in 1 5 25; do
  cp "$A/base.img" "$A/slot-a"
  head -c "${AMIB}M" /dev/zero | tr '\0' 'Z' > "$A/slot-b"
  rm -rf "$A/data"
  /usr/bin/time -f '%M' -o "$A/rss-$pct" "$ROTA" install --conf "$A/system.conf" --override-boot-slot=A \
    "http://127.0.0.1:$port/adaptive-$pct.raucb" > /dev/null 2> "$A/log-$pct"
  printf -v "ADAPTIVE_KB_$pct" '%s' "$(tail -n1 "$A/rss-$pct")"
  cmp -s "$A/slot-b" "$A/c$pct/rootfs.img" || { echo "adaptive $pct %: slot B differs from the image" >&2; exit 1; }
  got=$(grep -o 'downloaded [0-9]*' "$A/log-$pct" | tail -n1 | cut -d' ' -f2)
  printf -v "ADAPTIVE_BYTES_$pct" '%s' "$got"
  printf -v "ADAPTIVE_SIZE_$pct" '%s' "$(stat -c %s "$W/adaptive-$pct.raucb")"
  echo "  $pct % changed: downloaded $got of $(stat -c %s "$W/adaptive-$pct.raucb") bytes" >&2
done
# Planning memory of a large adaptive image, without the image: index files
# of an 8 GiB image, its target and its seed (2 Mi blocks each).
echo "Planning an 8 GiB adaptive image (index files only):" >&2
PLAN_LINE=$(ROTA_PLAN_DIR=$W cargo test --release --locked -q -p rota planning_memory -- --ignored --nocapture 2>/dev/null \
  | grep '^planning ')
echo "  $PLAN_LINE" >&2
adaptive_row() {
  local pct=$1 got size changed kb
  got=${!2} size=${!3} kb=ADAPTIVE_KB_$1
  kb=${!kb}
  changed=$((AMIB * 1048576 / 131072 * pct / 100 * 131072))
  echo "| $pct % | $(mib $((size / 1024))) MiB | $(mib $((changed / 1024))) MiB | $(mib $((got / 1024))) MiB | $(echo "scale=3; $got / $size" | bc -l | sed 's/^\./0./') | $(ratio "$got" "$changed") | $(mib "$kb") MiB |"
}

mibps() { echo "scale=1; $SIZE / 1048576 / $1" | bc -l; }
cat <<MD
### Streaming install from nginx (issue 5)

The $MIB MiB raw image's verity bundle ($(bundle_mib "$W/verity.raucb") MiB) from nginx on 127.0.0.1
into a file-backed slot (as in the install benchmark), against \`curl -o /dev/null\` of the same
bundle from the same nginx. Throughput = bundle size / wall time; the install also inflates,
verifies, writes, syncs and reads back the image. $(nproc) cores. Command: \`bench/run stream\`.

| link | operation | time | throughput | ratio to curl | peak memory | fetched |
|---|---|---:|---:|---:|---:|---:|
| loopback | \`curl -o /dev/null\` | ${RESULT_curl_loopback_S} s | $(mibps "$RESULT_curl_loopback_S") MiB/s | 1.00 | $(mib "$RESULT_curl_loopback_KB") MiB | 100 % |
| loopback | **\`rota install URL\`** | ${RESULT_rota_loopback_S} s | $(mibps "$RESULT_rota_loopback_S") MiB/s | $(ratio "$RESULT_curl_loopback_S" "$RESULT_rota_loopback_S") | $(mib "$RESULT_rota_loopback_KB") MiB | $FETCHED_loopback % |
| $RATE (tbf) | \`curl -o /dev/null\` | ${RESULT_curl_link_S} s | $(mibps "$RESULT_curl_link_S") MiB/s | 1.00 | $(mib "$RESULT_curl_link_KB") MiB | 100 % |
| $RATE (tbf) | **\`rota install URL\`** | ${RESULT_rota_link_S} s | $(mibps "$RESULT_rota_link_S") MiB/s | $(ratio "$RESULT_curl_link_S" "$RESULT_rota_link_S") | $(mib "$RESULT_rota_link_KB") MiB | $FETCHED_link % |

Adaptive updates (\`adaptive=block-hash-index\`): a random $AMIB MiB image in the booted slot, the
same image with 1, 5 and 25 % of its blocks changed (128 KiB runs at random places) in a verity
bundle on the same nginx, installed into the other slot. Bytes fetched as the install reported them
(\`downloaded … bytes\`); the installed slot is compared with the image; peak memory is the
install's maximum RSS. Same command (\`ROTA_BENCH_ADAPTIVE_MIB\` sets the image size).

| changed | bundle | changed bytes | fetched | fetched / bundle | fetched / changed | peak memory |
|---|---:|---:|---:|---:|---:|---:|
$(adaptive_row 1 ADAPTIVE_BYTES_1 ADAPTIVE_SIZE_1)
$(adaptive_row 5 ADAPTIVE_BYTES_5 ADAPTIVE_SIZE_5)
$(adaptive_row 25 ADAPTIVE_BYTES_25 ADAPTIVE_SIZE_25)

Planning an 8 GiB adaptive image (2 Mi blocks; index files of the image, the target and the seed,
no image data; \`cargo test --release -p rota planning_memory -- --ignored --nocapture\`, run by
the same command): $PLAN_LINE. Whole-image lookups (before 92e014f) would hold 48 MiB.
MD
