#!/usr/bin/env bash
# Issue 2's benchmark, for a ~1 GiB mixed-content bundle input:
#  - creating a verity bundle: rota bundle vs Debian's rauc bundle
#  - verifying and reading every file: rota extract vs the floor (sha256sum
#    and openssl dgst of the bundle file), vs unsquashfs -d of the payload,
#    and vs rauc extract
# Extraction goes to tmpfs, inputs are in the page cache (warm runs).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
W=$BENCH_DIR/bundle
OUT=/dev/shm/rota-bench-out
mkdir -p "$W"

if [ ! -f "$W/content/.done" ]; then
  echo "Generating ~1 GiB of mixed content in $W/content" >&2
  rm -rf "$W/content" && mkdir -p "$W/content/extras"
  set +o pipefail # head closes the pipes of yes and cat on purpose
  # rootfs.img: random, zero and text regions (384 MiB)
  { head -c 128M /dev/urandom; head -c 128M /dev/zero;
    yes 'Nov 22 04:49:18 charger evse[812]: session 42 energy=12.34kWh state=Charging' | head -c 128M; } > "$W/content/rootfs.img"
  # appfs.img: shared libraries (binary, partly compressible), 128 MiB
  find /usr/lib -name '*.so*' -type f -size +100k -print0 2>/dev/null | xargs -0 cat 2>/dev/null | head -c 128M > "$W/content/appfs.img"
  truncate -s 128M "$W/content/appfs.img"
  # extras/: many small files (documentation, headers, Python), ~500 MiB
  for d in /usr/share/doc /usr/include /usr/share/locale /usr/lib/python3 /usr/share/perl /usr/lib/x86_64-linux-gnu/perl-base /usr/share/zoneinfo; do
    [ -d "$d" ] && cp -a "$d" "$W/content/extras/$(echo "$d" | tr / _)" 2>/dev/null || true
  done
  # Bundle inputs may only hold files, directories and links within a directory.
  find "$W/content/extras" -type l -delete
  find "$W/content/extras" ! -type f ! -type d -delete
  have=$(du -sb "$W/content" | cut -f1)
  want=$((1024 * 1024 * 1024))
  if ((have < want)); then head -c $((want - have)) /dev/urandom > "$W/content/extras/filler.bin"; fi
  cat > "$W/manifest.in" <<MF
[update]
compatible=rota-bench
version=1.0

[bundle]
format=verity

[image.rootfs]
filename=rootfs.img

[image.appfs]
filename=appfs.img
MF
  set -o pipefail
  touch "$W/content/.done"
fi
# rauc 1.8 writes its normalized manifest back into the input directory
# (through the hard links of its work copy); every run starts from the original.
restore="cp $W/manifest.in $W/content/manifest.raucm"
bench_pki "$W"
files=$(find "$W/content" -type f | wc -l)
eval "$restore"
bytes=$(du -sb --exclude=.done "$W/content" | cut -f1)
echo "Input: $files files, $(mib $((bytes / 1024))) MiB" >&2

echo "Creating verity bundles (2 runs each):" >&2
measure rota_bundle 2 "rm -f $W/rota.raucb; $restore" "$ROTA" bundle "${SIGN[@]}" "$W/content" "$W/rota.raucb"
measure rauc_bundle 2 "rm -f $W/rauc.raucb; $restore" rauc bundle "${SIGN[@]}" "$W/content" "$W/rauc.raucb"
size=$(stat -c %s "$W/rota.raucb")

# The payload's squashfs as a file of its own, for unsquashfs.
sig=$(tail -c 8 "$W/rota.raucb" | od -An -tu8 --endian=big | tr -d ' ')
vsize=$("$ROTA" info --keyring "$K" --output-format=json-2 "$W/rota.raucb" 2>/dev/null | sed -n 's/.*"verity-size" : \([0-9]*\).*/\1/p')
data=$((size - 8 - sig - vsize))
head -c "$data" "$W/rota.raucb" > "$W/payload.sqfs"
cat "$W/rota.raucb" "$W/payload.sqfs" > /dev/null

echo "Verifying and reading every file (3 runs each, warm cache, output on tmpfs):" >&2
measure sha256sum 3 "" sha256sum "$W/rota.raucb"
measure openssl_sha256 3 "" openssl dgst -sha256 "$W/rota.raucb"
measure unsquashfs 3 "rm -rf $OUT" unsquashfs -q -n -d "$OUT" "$W/payload.sqfs"
measure rota_extract 3 "rm -rf $OUT" "$ROTA" extract --keyring "$K" "$W/rota.raucb" "$OUT"
measure rauc_extract 3 "rm -rf $OUT" rauc extract --keyring "$K" "$W/rota.raucb" "$OUT"
rm -rf "$OUT"

cat <<MD
### Bundle creation and reading (issue 2)

Input: $files files, $(mib $((bytes / 1024))) MiB of mixed content (random, zeros, text, shared
libraries, documentation/headers/Python trees); verity bundle of $(mib $((size / 1024))) MiB (gzip, mksquashfs
defaults). $(nproc) cores. Command: \`bench/run bundle\`.

| operation | time | ratio | peak memory |
|---|---:|---:|---:|
| \`rota bundle\` | ${RESULT_rota_bundle_S} s | 1.00 | $(mib "$RESULT_rota_bundle_KB") MiB |
| \`rauc bundle\` (Debian 1.8) | ${RESULT_rauc_bundle_S} s | $(ratio "$RESULT_rauc_bundle_S" "$RESULT_rota_bundle_S") × rota | $(mib "$RESULT_rauc_bundle_KB") MiB |
| floor: \`sha256sum\` of the bundle | ${RESULT_sha256sum_S} s | 1.00 | $(mib "$RESULT_sha256sum_KB") MiB |
| floor: \`openssl dgst -sha256\` of the bundle | ${RESULT_openssl_sha256_S} s | $(ratio "$RESULT_openssl_sha256_S" "$RESULT_sha256sum_S") × sha256sum | $(mib "$RESULT_openssl_sha256_KB") MiB |
| \`unsquashfs -d\` of the payload (no verification) | ${RESULT_unsquashfs_S} s | $(ratio "$RESULT_unsquashfs_S" "$RESULT_sha256sum_S") × sha256sum | $(mib "$RESULT_unsquashfs_KB") MiB |
| **\`rota extract\`** (every block verified, every file read and written) | ${RESULT_rota_extract_S} s | $(ratio "$RESULT_rota_extract_S" "$RESULT_sha256sum_S") × sha256sum, $(ratio "$RESULT_rota_extract_S" "$RESULT_openssl_sha256_S") × openssl, $(ratio "$RESULT_rota_extract_S" "$RESULT_unsquashfs_S") × unsquashfs | $(mib "$RESULT_rota_extract_KB") MiB |
| \`rauc extract\` (Debian 1.8) | ${RESULT_rauc_extract_S} s | $(ratio "$RESULT_rauc_extract_S" "$RESULT_rota_extract_S") × rota | $(mib "$RESULT_rauc_extract_KB") MiB |
MD
