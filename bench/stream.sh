#!/usr/bin/env bash
# Issue 5's benchmark, with issue 21's floor: streaming installs of verity
# bundles from a local nginx against `curl -o file && sync` of the same
# bundle from the same nginx onto the same disk, in one run, twice: over
# plain loopback (CPU-bound: what the install costs beyond moving bytes)
# and over loopback shaped to a 400 Mbit/s link with tbf (network-bound:
# does the install keep the link as busy as curl does). Two bundles: the
# 1 GiB half-compressible image of the install benchmark, and a random
# image of ROTA_BENCH_STREAM_MIB (default 256) MiB (incompressible).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
install_fixture
RATE=${ROTA_BENCH_LINK:-400mbit}
SMIB=${ROTA_BENCH_STREAM_MIB:-256}

# The random image and its bundles.
RS=$W/stream-random-$SMIB
random_bundles "$RS" "$SMIB"

# nginx serving the bundles.
serve "$W/nginx" "$W"
ROTA_INSTALL=("$ROTA" install --conf "$W/system.conf" --override-boot-slot=A)
FIXTURE_IMG=$IMG

# run_pair TAG URL IMAGE: curl to a file and sync, then rota, 3 runs each.
run_pair() {
  local tag=$1 url=$2
  IMG=$3
  measure "curl_$tag" 3 "$reset" bash -c "curl -s -o '$W/slot-b' '$url' && sync"
  measure "rota_$tag" 3 "$reset" "${ROTA_INSTALL[@]}" "$url"
  # The share of the bundle the last run fetched, as the install logged it.
  printf -v "FETCHED_$tag" '%s' "$(grep -o '[0-9.]*% of the full bundle' "$BENCH_DIR/.err" | tail -n1 | cut -d'%' -f1)"
  check_installed "rota install $url"
  IMG=$FIXTURE_IMG
}

MIXED_URL=http://127.0.0.1:$port/verity.raucb
RANDOM_URL=http://127.0.0.1:$port/stream-random-$SMIB/verity.raucb
echo "Streaming from nginx, loopback (3 runs each):" >&2
run_pair mixed_loopback "$MIXED_URL" "$IMG"
run_pair random_loopback "$RANDOM_URL" "$RS/content/rootfs.img"
echo "Streaming from nginx, loopback shaped to $RATE (3 runs each):" >&2
tc qdisc add dev lo root tbf rate "$RATE" burst 256kb latency 50ms
shaped=1
run_pair mixed_link "$MIXED_URL" "$IMG"
run_pair random_link "$RANDOM_URL" "$RS/content/rootfs.img"
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

# stream_rows TAG LINK SIZE: the curl and rota rows of one bundle on one link.
stream_rows() {
  local t=$1 link=$2 size=$3 c r ck rk f
  c=RESULT_curl_${t}_S r=RESULT_rota_${t}_S ck=RESULT_curl_${t}_KB rk=RESULT_rota_${t}_KB f=FETCHED_$t
  echo "| $link | \`curl -o file && sync\` | ${!c} s | $(echo "scale=1; $size / 1048576 / ${!c}" | bc -l) MiB/s | 1.00 | $(mib "${!ck}") MiB | 100 % |"
  echo "| $link | **\`rota install URL\`** | ${!r} s | $(echo "scale=1; $size / 1048576 / ${!r}" | bc -l) MiB/s | $(ratio "${!c}" "${!r}") | $(mib "${!rk}") MiB | ${!f} % |"
}
MIXED_SIZE=$(stat -c %s "$W/verity.raucb")
RANDOM_SIZE=$(stat -c %s "$RS/verity.raucb")
cat <<MD
### Streaming install from nginx (issue 5, floor of issue 21)

Verity bundles from nginx on 127.0.0.1 into a file-backed slot (as in the install benchmark),
against \`curl -o file && sync\` of the same bundle from the same nginx onto the same disk (a
file emptied before each run, as the slot is). Throughput = bundle size / wall time; the install
also inflates, verifies, writes, syncs and reads back the image. Median of 3, $(nproc) cores.
Command: \`bench/run stream\`.

Half-compressible $MIB MiB image (verity bundle $(bundle_mib "$W/verity.raucb") MiB):

| link | operation | time | throughput | ratio to curl | peak memory | fetched |
|---|---|---:|---:|---:|---:|---:|
$(stream_rows mixed_loopback loopback "$MIXED_SIZE")
$(stream_rows mixed_link "$RATE (tbf)" "$MIXED_SIZE")

Random $SMIB MiB image (incompressible; verity bundle $(bundle_mib "$RS/verity.raucb") MiB):

| link | operation | time | throughput | ratio to curl | peak memory | fetched |
|---|---|---:|---:|---:|---:|---:|
$(stream_rows random_loopback loopback "$RANDOM_SIZE")
$(stream_rows random_link "$RATE (tbf)" "$RANDOM_SIZE")

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
