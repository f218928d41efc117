#!/usr/bin/env bash
# Issue 20's benchmark: a 1 GiB raw image (ROTA_BENCH_CASYNC_MIB) whose new
# release has 5 % of its blocks changed (128 KiB runs at random places), as
# a casync bundle made by `rota convert`, installed from nginx over loopback
# shaped to 400 Mbit/s (ROTA_BENCH_LINK) with the booted slot holding the
# old release; against `casync extract --seed=<booted slot>` of the same
# index from the same store (RAUC's own casync call, --seed-output=no), and
# against rota's adaptive `block-hash-index` install of the same change.
# Bytes fetched (nginx's log), wall time and peak memory; one run each
# after a warm-up of the page cache. Slot B starts as zeros every run.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
W=$BENCH_DIR/casync
MIB=${ROTA_BENCH_CASYNC_MIB:-1024}
RATE=${ROTA_BENCH_LINK:-400mbit}
mkdir -p "$W/www"
bench_pki "$W"

if [ ! -f "$W/.done2-$MIB" ]; then
  echo "Generating a $MIB MiB image (half random, a quarter zeros, a quarter text) and its 5 % change" >&2
  rm -rf "$W"/c "$W"/www/* "$W"/.done* "$W"/*.raucb
  mkdir -p "$W/c/plain" "$W/c/adaptive"
  set +o pipefail
  { head -c $((MIB / 2))M /dev/urandom; head -c $((MIB / 4))M /dev/zero;
    yes 'Nov 22 04:49:18 charger evse[812]: session 42 energy=12.34kWh state=Charging' | head -c $((MIB / 4))M; } \
    > "$W/base.img"
  set -o pipefail
  python3 - "$W/base.img" "$W/c/plain/rootfs.img" <<'PY'
import os, random, sys
data = bytearray(open(sys.argv[1], 'rb').read())
run = 128 * 1024
runs = len(data) // run
for r in random.Random(5).sample(range(runs), runs * 5 // 100):
    data[r * run:(r + 1) * run] = os.urandom(run)
open(sys.argv[2], 'wb').write(data)
PY
  ln "$W/c/plain/rootfs.img" "$W/c/adaptive/rootfs.img"
  head -c 65536 /dev/urandom > "$W/c/plain/notes.bin"
  printf '[update]\ncompatible=rota-bench\nversion=2.0\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.img\n' \
    > "$W/c/plain/manifest.raucm"
  printf '[update]\ncompatible=rota-bench\nversion=2.0\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.img\nadaptive=block-hash-index\n' \
    > "$W/c/adaptive/manifest.raucm"
  "$ROTA" bundle "${SIGN[@]}" "$W/c/plain" "$W/full.raucb" >/dev/null 2>&1
  "$ROTA" bundle "${SIGN[@]}" "$W/c/adaptive" "$W/www/adaptive.raucb" >/dev/null 2>&1
  "$ROTA" convert "${SIGN[@]}" --keyring "$K" "$W/full.raucb" "$W/www/casync.raucb" >/dev/null 2>&1
  unsquashfs -cat "$W/www/casync.raucb" rootfs.img.caibx > "$W/rootfs.img.caibx"
  # The old release as a casync bundle too (for the booted slot installed by rota).
  mkdir -p "$W/c/old"
  ln "$W/base.img" "$W/c/old/rootfs.img"
  cp "$W/c/plain/notes.bin" "$W/c/old/"
  sed 's/^version=2.0/version=1.0/' "$W/c/plain/manifest.raucm" > "$W/c/old/manifest.raucm"
  "$ROTA" bundle "${SIGN[@]}" "$W/c/old" "$W/old-full.raucb" >/dev/null 2>&1
  "$ROTA" convert "${SIGN[@]}" --keyring "$K" "$W/old-full.raucb" "$W/www/old.raucb" >/dev/null 2>&1
  touch "$W/.done2-$MIB"
fi
NEW=$W/c/plain/rootfs.img

ab_system_conf "$W" raw "data-directory=$W/data" "$K"
cp "$W/base.img" "$W/slot-a"

serve "$W/nginx" "$W/www"
URL=http://127.0.0.1:$port

prepare() {
  rm -rf "$W/grubenv"
  head -c "${MIB}M" /dev/zero > "$W/slot-b"
  grub-editenv "$W/grubenv" set ORDER='A B' A_OK=1 B_OK=1 A_TRY=0 B_TRY=0
  cat "$W/slot-a" "$NEW" "$W/www/casync.raucb" > /dev/null
  sync
  : > "$W/nginx/access.log"
}

# one NAME COMMAND...: a cold-slot run with the time, peak memory and bytes
# served by nginx recorded as NAME_S, NAME_KB, NAME_BYTES.
one() {
  local name=$1; shift
  prepare
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$W/rss" "$@" > "$W/log-$name" 2>&1 || { cat "$W/log-$name" >&2; exit 1; }
  sync
  t1=$(date +%s.%N)
  cmp -s -n "$(stat -c %s "$NEW")" "$NEW" "$W/slot-b" || { echo "$name: slot B does not hold the new image" >&2; exit 1; }
  printf -v "${name}_S" '%.2f' "$(echo "$t1 - $t0" | bc -l)"
  printf -v "${name}_KB" '%s' "$(tail -n1 "$W/rss")"
  printf -v "${name}_BYTES" '%s' "$(awk '{s += $1} END {print s + 0}' "$W/nginx/access.log")"
  local s=${name}_S kb=${name}_KB b=${name}_BYTES
  printf '  %-10s %8.2f s %8.1f MiB peak %10s bytes fetched\n' "$name" "${!s}" "$(echo "${!kb} / 1024" | bc -l)" "${!b}" >&2
}

tc qdisc add dev lo root tbf rate "$RATE" burst 256kb latency 50ms
shaped=1
echo "casync bundle of a $MIB MiB image, 5 % changed, from nginx over $RATE:" >&2
# First update: the booted slot was not installed by rota (copied in), so
# it is read and cut before the install (and the target with it).
rm -rf "$W/data"
one rota "$ROTA" install --conf "$W/system.conf" --override-boot-slot=A "$URL/casync.raucb"
ROTA_SUMMARY=$(grep -o 'rootfs.img.caibx: .*' "$W/log-rota" | tail -n1)
# Next update: the booted slot holds the old release as rota installed it
# from its casync bundle, whose index rota kept.
rm -rf "$W/data"
grub-editenv "$W/grubenv" set ORDER='B A' A_OK=1 B_OK=1 A_TRY=0 B_TRY=0
"$ROTA" install --conf "$W/system.conf" --override-boot-slot=B "$URL/old.raucb" > /dev/null 2>&1
cmp -s "$W/base.img" "$W/slot-a" || { echo "slot A does not hold the old release" >&2; exit 1; }
one rotanext "$ROTA" install --conf "$W/system.conf" --override-boot-slot=A "$URL/casync.raucb"
NEXT_SUMMARY=$(grep -o 'rootfs.img.caibx: .*' "$W/log-rotanext" | tail -n1)
one casync casync extract --seed="$W/slot-a" --seed-output=no --store="$URL/casync.castr" "$W/rootfs.img.caibx" "$W/slot-b"
one adaptive "$ROTA" install --conf "$W/system.conf" --override-boot-slot=A "$URL/adaptive.raucb"
tc qdisc del dev lo root
shaped=0

changed=$((MIB * 1048576 / 131072 * 5 / 100 * 131072))
row() {
  local name=$1 label=$2 s=${1}_S kb=${1}_KB b=${1}_BYTES
  echo "| $label | $(mib $((${!b} / 1024))) MiB | $(ratio "${!b}" "$changed") | ${!s} s | $(ratio "$casync_S" "${!s}") | $(mib "${!kb}") MiB |"
}
cat <<MD
### casync bundles (issue 20)

A $MIB MiB raw image (half random, a quarter zeros, a quarter text) whose new release has 5 % of
its blocks changed ($(mib $((changed / 1024))) MiB in 128 KiB runs), installed from nginx over loopback
shaped to $RATE (tbf), the booted slot holding the old release and the target starting as zeros.
rota installs the \`rota convert\`ed verity bundle (store next to it, chunks checked against their
IDs, seeded from the booted slot and the target, then SHA-256 against the manifest and read back);
casync is Debian's \`casync extract --seed=<booted slot> --seed-output=no\` of the same index and
store (RAUC's own call); adaptive is rota's \`block-hash-index\` install of the same change. One
cold run each, $(nproc) cores. Command: \`bench/run casync\`.

| install | fetched | × changed bytes | time | speed-up vs casync | peak memory |
|---|---:|---:|---:|---:|---:|
$(row rota "**rota, casync bundle**, first update (slots read and cut)")
$(row rotanext "**rota, casync bundle**, next update (kept index of the booted slot)")
$(row casync "\`casync extract --seed\`")
$(row adaptive "rota, adaptive bundle")

rota's own account: first \`$ROTA_SUMMARY\`; next \`$NEXT_SUMMARY\`.
The first update reads and cuts the booted slot and the target before writing (casync reads the
booted slot); after an install from a casync bundle rota keeps the image's index in its data
directory, so the next update starts writing at once, each seed chunk still checked against its ID.
MD
