#!/usr/bin/env bash
# Issue 3's benchmark: installing a 1 GiB raw image into a file-backed slot
# on the root filesystem (ext4), bundle and image warm in the page cache,
# for the half-compressible image of the fixture and for a random one
# (incompressible: squashfs stores it as is, so no inflate cost hides the
# data path).
#  - floor: `cat image > slot; sync` with `openssl dgst -sha256 image` (the
#    fastest hash on the machine, SHA-NI) running alongside
#  - rota install of a verity bundle and of a plain bundle (direct mode)
#  - Debian's rauc 1.8 install of the same plain bundle (its service on a
#    private session bus; rauc needs device-mapper for verity, which this
#    kernel lacks)
# ROTA_BENCH_IMAGE_MIB changes the image size (default 1024).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
install_fixture

# Debian's rauc: its service runs on a private session bus under /usr/bin/time
# (peak memory of the service); the time is that of the `rauc install` client.
export DBUS_STARTER_BUS_TYPE=session
DBUS_SESSION_BUS_ADDRESS=$(dbus-daemon --session --fork --print-address=1 --print-pid=3 3>"$W/.bus-pid")
export DBUS_SESSION_BUS_ADDRESS
trap 'kill "$(cat "$W/.bus-pid")" 2>/dev/null || true' EXIT
rauc_install() {
  local times=() peak=0 i t0 t1 rss pid
  for ((i = 0; i < $1; i++)); do
    bash -c "$reset"
    /usr/bin/time -f '%M' -o "$W/.rauc-rss" rauc service --conf "$W/system.conf" --override-boot-slot=A \
      >"$W/rauc-service.log" 2>&1 &
    pid=$!
    until busctl --user status de.pengutronix.rauc >/dev/null 2>&1; do
      kill -0 "$pid" 2>/dev/null || { cat "$W/rauc-service.log" >&2; exit 1; }
      sleep 0.1
    done
    t0=$(date +%s.%N)
    rauc install "$PLAIN" >"$W/rauc-install.log" 2>&1 || { cat "$W/rauc-install.log" "$W/rauc-service.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    pkill -TERM -P "$pid" rauc
    wait "$pid" || true
    check_installed "rauc install"
    times+=("$(echo "$t1 - $t0" | bc -l)")
    rss=$(grep -E '^[0-9]+$' "$W/.rauc-rss" | tail -n1)
    ((rss > peak)) && peak=$rss
  done
  printf -v "RESULT_rauc_plain_${2}_S" '%.2f' "$(median "${times[@]}")"
  printf -v "RESULT_rauc_plain_${2}_KB" '%s' "$peak"
  local s=RESULT_rauc_plain_${2}_S
  printf '  %-22s %8.2f s  %8.1f MiB peak  (%d runs)\n' "rauc_plain_$2" "${!s}" "$(mib "$peak")" "$1" >&2
}

# A random image of the same size and its bundles.
R=$W/random-$MIB
random_bundles "$R" "$MIB"

# run_case TAG IMAGE VERITY PLAIN: the floor and its parts, rota (verity and
# plain) and Debian's rauc (plain) for one image; results as RESULT_<x>_<TAG>_*.
run_case() {
  local tag=$1
  IMG=$2 VERITY=$3 PLAIN=$4
  cat "$IMG" "$VERITY" "$PLAIN" > /dev/null
  echo "Installing the $tag image ($RUNS runs each):" >&2
  measure "write_sync_$tag" "$RUNS" "$reset" bash -c "cat '$IMG' > '$W/slot-b' && sync"
  measure "dgst_$tag" "$RUNS" "" openssl dgst -sha256 "$IMG"
  measure "floor_$tag" "$RUNS" "$reset" bash -c "{ cat '$IMG' > '$W/slot-b' && sync; } & openssl dgst -sha256 '$IMG' > /dev/null; wait"
  check_installed "the floor"
  measure "floor_back_$tag" "$RUNS" "$reset" bash -c "{ cat '$IMG' > '$W/slot-b' && sync && dd if='$W/slot-b' of=/dev/null bs=1M iflag=direct status=none; } & openssl dgst -sha256 '$IMG' > /dev/null; wait"
  measure "rota_verity_$tag" "$RUNS" "$reset" "${ROTA_INSTALL[@]}" "$VERITY"
  check_installed "rota install (verity)"
  measure "rota_plain_$tag" "$RUNS" "$reset" "${ROTA_INSTALL[@]}" "$PLAIN"
  check_installed "rota install (plain)"
  rauc_install "$RUNS" "$tag"
}
ROTA_INSTALL=("$ROTA" install --conf "$W/system.conf" --override-boot-slot=A)
# The disk of a virtual machine is noisy: median of 5.
RUNS=${ROTA_BENCH_RUNS:-5}
run_case mixed "$W/content-$MIB/rootfs.img" "$W/verity.raucb" "$W/plain.raucb"
run_case random "$R/content/rootfs.img" "$R/verity.raucb" "$R/plain.raucb"

# rows TAG: the table rows of one image.
rows() {
  local t=$1 v
  v() { local n="RESULT_$1_${t}_$2"; echo "${!n}"; }
  local floor
  floor=$(v floor S)
  echo "| floor: \`cat image > slot; sync\` ‖ \`openssl dgst -sha256 image\` | $floor s | 1.00 | $(mib "$(v floor KB)") MiB |"
  echo "| (part of the floor: \`cat image > slot; sync\` alone) | $(v write_sync S) s | $(ratio "$(v write_sync S)" "$floor") × floor | $(mib "$(v write_sync KB)") MiB |"
  echo "| (part of the floor: \`openssl dgst -sha256 image\` alone) | $(v dgst S) s | $(ratio "$(v dgst S)" "$floor") × floor | $(mib "$(v dgst KB)") MiB |"
  echo "| floor with read-back: the floor, then \`dd if=slot iflag=direct\` (every byte from the medium) | $(v floor_back S) s | $(ratio "$(v floor_back S)" "$floor") × floor | $(mib "$(v floor_back KB)") MiB |"
  local back
  back=$(v floor_back S)
  echo "| **\`rota install\`**, verity bundle | $(v rota_verity S) s | $(ratio "$(v rota_verity S)" "$floor") × floor, $(ratio "$(v rota_verity S)" "$back") × floor with read-back | $(mib "$(v rota_verity KB)") MiB |"
  echo "| **\`rota install\`**, plain bundle | $(v rota_plain S) s | $(ratio "$(v rota_plain S)" "$floor") × floor, $(ratio "$(v rota_plain S)" "$back") × floor with read-back | $(mib "$(v rota_plain KB)") MiB |"
  echo "| \`rauc install\` (Debian 1.8), same plain bundle | $(v rauc_plain S) s | $(ratio "$(v rauc_plain S)" "$floor") × floor, $(ratio "$(v rauc_plain S)" "$(v rota_plain S)") × rota | $(mib "$(v rauc_plain KB)") MiB (service) |"
}

cat <<MD
### Installing a raw image (issue 3, floor of issue 21)

A $MIB MiB raw image from a local bundle into a file-backed slot on the root filesystem (ext4 on
virtio); bundle and image warm in the page cache, the target file emptied before each run; median
of $RUNS. The floor is the fastest way this machine does the bare job: the copy and sync, and
alongside it \`openssl dgst -sha256\` (SHA-NI). rota also reads every written byte back from the
medium; the floor with read-back adds that read (\`O_DIRECT\`, 1 MiB requests) after the sync.
$(nproc) cores. Command: \`bench/run install\`.

Half-compressible image (half random, a quarter zeros, a quarter text; verity bundle
$(bundle_mib "$W/verity.raucb") MiB, plain $(bundle_mib "$W/plain.raucb") MiB, gzip):

| operation | time | ratio | peak memory |
|---|---:|---:|---:|
$(rows mixed)

Random image (incompressible; verity bundle $(bundle_mib "$R/verity.raucb") MiB, plain $(bundle_mib "$R/plain.raucb") MiB):

| operation | time | ratio | peak memory |
|---|---:|---:|---:|
$(rows random)
MD
