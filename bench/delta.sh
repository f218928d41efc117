#!/usr/bin/env bash
# Issue 6's benchmark: file-level delta installs of a generated root file
# system (ROTA_BENCH_TREE_FILES files, default 30000, about 1 GiB) with 1, 5
# and 25 % of its files changed, streamed from a local nginx over loopback
# shaped to a 400 Mbit/s link, into an emptied ext4 slot while the booted
# slot holds the old version. In one run per change, three ways to the same
# tree: rota's tree image (file-level delta), rota's full streaming install
# of an ext4 image of the same tree, and Debian's `casync extract` of the
# same tree with the booted slot's filesystem as seed. Bytes over the
# network (nginx's $bytes_sent), wall time, and the result checked.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
W=$BENCH_DIR/delta
FILES=${ROTA_BENCH_TREE_FILES:-30000}
MEAN=${ROTA_BENCH_TREE_MEAN:-38000}
RATE=${ROTA_BENCH_LINK:-400mbit}
cargo build --release --locked -q -p rota-tests --bin rota-rootfs
GEN=$PWD/target/release/rota-rootfs
mkdir -p "$W/www" "$W/mnt"
bench_pki "$W"

# Version 1 and the booted slot A holding it.
if [ ! -f "$W/.done-$FILES-$MEAN" ]; then
  echo "Generating a root file system of $FILES files" >&2
  rm -rf "$W/v1" "$W/slot-a" "$W"/.done-*
  "$GEN" generate "$W/v1" "$FILES" "$MEAN" 1
  touch "$W/.done-$FILES-$MEAN"
fi
TREE_BYTES=$(du -sb --apparent-size "$W/v1" | cut -f1)
SLOT_MIB=$((TREE_BYTES * 13 / 10 / 1048576 + 64))
if [ ! -f "$W/slot-a" ]; then
  mkfs.ext4 -q -d "$W/v1" "$W/slot-a" "${SLOT_MIB}M"
fi
echo "Tree: $FILES files, $(mib $((TREE_BYTES / 1024))) MiB; slots of $SLOT_MIB MiB" >&2

ab_system_conf "$W" ext4 "data-directory=$W/data" "$W/pki/keyring.pem"
reset="rm -rf $W/slot-b $W/data $W/grubenv; truncate -s ${SLOT_MIB}M $W/slot-b;
  grub-editenv $W/grubenv set ORDER='A B' A_OK=1 B_OK=1 A_TRY=0 B_TRY=0; sync"

# nginx logging the bytes of every response.
N=$W/nginx
start_nginx "$N" "$W/www"
shaped=0
cleanup() {
  kill "$nginx_pid" 2>/dev/null || true
  [ "$shaped" = 1 ] && tc qdisc del dev lo root 2>/dev/null || true
  for m in "$W/mnt-a" "$W/mnt-b" "$W/check"; do mountpoint -q "$m" && umount "$m"; done
  true
}
trap cleanup EXIT
URL=http://127.0.0.1:$port

# served: bytes nginx sent since the log was last cleared.
served() { awk '{s += $1} END {print s + 0}' "$N/access.log"; }
clear_log() { : > "$N/access.log"; }

# timed NAME COMMAND...: runs COMMAND once after clearing the log; sets
# T_NAME (seconds), B_NAME (bytes served), KB_NAME (peak RSS).
timed() {
  local name=$1 t0 t1
  shift
  clear_log
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$W/.rss" "$@" > "$W/out-$name" 2>&1 || { cat "$W/out-$name" >&2; exit 1; }
  t1=$(date +%s.%N)
  printf -v "T_$name" '%.2f' "$(echo "$t1 - $t0" | bc -l)"
  printf -v "B_$name" '%s' "$(served)"
  printf -v "KB_$name" '%s' "$(tail -n1 "$W/.rss")"
}

# check_b WHAT: slot B holds version 2.
check_b() {
  mkdir -p "$W/check"
  mount -o ro "$W/slot-b" "$W/check"
  "$GEN" compare "$W/check" "$W/v2" || { umount "$W/check"; echo "slot B differs from version 2 after $1" >&2; exit 1; }
  umount "$W/check"
}

ROTA_INSTALL=("$ROTA" install --conf "$W/system.conf" --override-boot-slot=A)
ROWS=""
for pct in 1 5 25; do
  echo "$pct % of the files changed:" >&2
  rm -rf "$W/v2" "$W/c-tree" "$W/c-img" "$W/www"/*
  cp -a "$W/v1" "$W/v2"
  read -r changed_files changed_bytes < <("$GEN" change "$W/v2" "$pct" 2)
  # The tree bundle (the directory moves into the bundle input and back).
  mkdir -p "$W/c-tree" "$W/c-img"
  mv "$W/v2" "$W/c-tree/rootfs.tree"
  printf '[update]\ncompatible=rota-bench\nversion=2\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.tree\n' \
    > "$W/c-tree/manifest.raucm"
  "$ROTA" bundle "${SIGN[@]}" "$W/c-tree" "$W/www/tree.raucb" > /dev/null 2>&1
  mv "$W/c-tree/rootfs.tree" "$W/v2"
  # The same tree as an ext4 image, for the full install.
  mkfs.ext4 -q -d "$W/v2" "$W/c-img/rootfs.ext4" "${SLOT_MIB}M" > /dev/null
  printf '[update]\ncompatible=rota-bench\nversion=2\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.ext4\n' \
    > "$W/c-img/manifest.raucm"
  "$ROTA" bundle "${SIGN[@]}" "$W/c-img" "$W/www/image.raucb" > /dev/null 2>&1
  rm -rf "$W/c-img"
  # casync's index and chunk store of the same tree.
  # Seconds in timestamps, as the ext4 images made by mkfs.ext4 -d hold them
  # (with nanoseconds no file entry of the seed would match).
  casync make --without=nsec-time --with=sec-time --store="$W/www/store" "$W/www/tree.caidx" "$W/v2" > /dev/null

  tc qdisc add dev lo root tbf rate "$RATE" burst 256kb latency 50ms
  shaped=1
  bash -c "$reset"
  timed delta "${ROTA_INSTALL[@]}" "$URL/tree.raucb"
  summary=$(grep -o 'Tree update of rootfs.1: .*' "$W/out-delta" | tail -n1)
  # The same, with B still holding version 1 (updated in place).
  bash -c "$reset"
  cp --sparse=always "$W/slot-a" "$W/slot-b"
  sync
  timed inplace "${ROTA_INSTALL[@]}" "$URL/tree.raucb"
  check_b "the delta install in place"
  bash -c "$reset"
  timed full "${ROTA_INSTALL[@]}" "$URL/image.raucb"
  # casync into a fresh filesystem on B, seeded by A mounted read-only.
  bash -c "$reset"
  mkfs.ext4 -q "$W/slot-b"
  mkdir -p "$W/mnt-a" "$W/mnt-b"
  mount -o ro "$W/slot-a" "$W/mnt-a"
  mount "$W/slot-b" "$W/mnt-b"
  sync
  timed casync sh -c "casync extract --store='$URL/store' --seed='$W/mnt-a' '$URL/tree.caidx' '$W/mnt-b/root' && sync"
  umount "$W/mnt-a"
  tc qdisc del dev lo root
  shaped=0
  "$GEN" compare "$W/mnt-b/root" "$W/v2" || echo "  (casync's result differs from version 2 as shown above)" >&2
  umount "$W/mnt-b"
  # The delta and full results were checked by rota (read back); check the delta's once more here.
  bash -c "$reset"
  "${ROTA_INSTALL[@]}" "$URL/tree.raucb" > /dev/null 2>&1
  check_b "the delta install"
  tree_size=$(stat -c %s "$W/www/tree.raucb")
  image_size=$(stat -c %s "$W/www/image.raucb")
  store_size=$(du -sb "$W/www/store" | cut -f1)
  echo "  delta:  $B_delta bytes in $T_delta s ($summary)" >&2
  echo "  in place: $B_inplace bytes in $T_inplace s" >&2
  echo "  full:   $B_full bytes in $T_full s" >&2
  echo "  casync: $B_casync bytes in $T_casync s" >&2
  ROWS+="| $pct % | $changed_files ($(mib $((changed_bytes / 1024))) MiB) | **delta** (tree bundle $(mib $((tree_size / 1024))) MiB) | **$(mib $((B_delta / 1024))) MiB** | **${T_delta} s** | $(mib "$KB_delta") MiB |
| | | delta, B holding version 1 | $(mib $((B_inplace / 1024))) MiB | ${T_inplace} s | $(mib "$KB_inplace") MiB |
| | | full image (bundle $(mib $((image_size / 1024))) MiB) | $(mib $((B_full / 1024))) MiB | ${T_full} s | $(mib "$KB_full") MiB |
| | | \`casync extract\` + seed (store $(mib $((store_size / 1024))) MiB) | $(mib $((B_casync / 1024))) MiB | ${T_casync} s | $(mib "$KB_casync") MiB |
| | | delta / full, delta / casync | $(ratio "$B_delta" "$B_full"), $(ratio "$B_delta" "$B_casync") | $(ratio "$T_delta" "$T_full"), $(ratio "$T_delta" "$T_casync") | |
"
done

# Peak memory against the number of files: small trees (ROTA_BENCH_SCALE_FILES,
# files of ~1.5 kB) with 5 % changed, installed from the local bundle file
# into an emptied B while A holds the old version, then once more into B
# holding the new one (its kept index read).
SCALE_ROWS=""
for n in ${ROTA_BENCH_SCALE_FILES:-10000 100000}; do
  S=$W/scale-$n
  slot_mib=$((n / 40 + 128))
  if [ ! -f "$S/.done" ]; then
    echo "Generating a tree of $n small files" >&2
    rm -rf "$S"; mkdir -p "$S/c"
    "$GEN" generate "$S/v1" "$n" 1500 1
    cp -a "$S/v1" "$S/c/rootfs.tree"
    "$GEN" change "$S/c/rootfs.tree" 5 2 > /dev/null
    printf '[update]\ncompatible=rota-bench\nversion=2\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.tree\n' \
      > "$S/c/manifest.raucm"
    "$ROTA" bundle "${SIGN[@]}" "$S/c" "$S/tree.raucb" > /dev/null 2>&1
    mkfs.ext4 -q -N $((n * 2)) -d "$S/v1" "$S/slot-a" "${slot_mib}M"
    touch "$S/.done"
  fi
  sed -e "s|$W/slot-a|$S/slot-a|; s|$W/slot-b|$S/slot-b|; s|$W/data|$S/data|; s|$W/grubenv|$S/grubenv|" \
    "$W/system.conf" > "$S/system.conf"
  rm -rf "$S/slot-b" "$S/data"; truncate -s "${slot_mib}M" "$S/slot-b"
  grub-editenv "$S/grubenv" set ORDER='A B' A_OK=1 B_OK=1 A_TRY=0 B_TRY=0
  scale_install=("$ROTA" install --conf "$S/system.conf" --override-boot-slot=A "$S/tree.raucb")
  timed scale "${scale_install[@]}"
  kb_empty=$KB_scale
  timed scale "${scale_install[@]}"
  kb_again=$KB_scale
  echo "  $n files: peak $kb_empty KiB into an emptied slot, $kb_again KiB again" >&2
  SCALE_ROWS+="| $n | $(mib "$kb_empty") MiB | $(mib "$kb_again") MiB |
"
done

cat <<MD
### File-level delta installs (issue 6)

A generated root file system ($FILES files, $(mib $((TREE_BYTES / 1024))) MiB: packages of mixed
file sizes, half random and half text content, links, devices, xattrs, capabilities, a sparse file)
in the booted ext4 slot A; the same tree with 1, 5 and 25 % of its files rewritten (plus a few
added, removed, moved and re-owned) installed into the emptied ext4 slot B (and, for the delta, once more into B still holding version 1) from nginx on loopback
shaped to $RATE with tbf. Three ways to the same tree in one run: rota's \`tree\` image (file-level
delta: files copied from A, only the rest fetched), rota's full streaming install of an ext4 image
of the tree (\`mkfs.ext4 -d\`), and Debian's \`casync extract\` of the tree (\`casync make
--with=sec-time\`: timestamps in seconds as the ext4 images hold them, else no entry of the seed
matches) with A's filesystem mounted read-only as seed. Fetched = bytes nginx sent; time = wall
time including sync; peak memory = maximum RSS. The delta result is compared with the tree (every
path, content and metadata; casync's result differs in hard links, which it does not restore).
$(nproc) cores. Command: \`bench/run delta\`.

| changed | files with new content | method | fetched | time | peak memory |
|---|---:|---|---:|---:|---:|
$ROWS

Peak memory against the number of files (trees of small files, 5 % changed, installed from the
local bundle file; the second install finds the slot's kept index):

| files | peak memory, emptied slot | again, slot holding the tree |
|---:|---:|---:|
$SCALE_ROWS
MD
