#!/usr/bin/env bash
# Issue 3's benchmark: installing a 1 GiB raw image into a file-backed slot
# on the root filesystem (ext4), bundle and image warm in the page cache.
#  - floor: `cat image > slot; sync` with `sha256sum image` running alongside
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
    rauc install "$W/plain.raucb" >"$W/rauc-install.log" 2>&1 || { cat "$W/rauc-install.log" "$W/rauc-service.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    pkill -TERM -P "$pid" rauc
    wait "$pid" || true
    check_installed "rauc install"
    times+=("$(echo "$t1 - $t0" | bc -l)")
    rss=$(grep -E '^[0-9]+$' "$W/.rauc-rss" | tail -n1)
    ((rss > peak)) && peak=$rss
  done
  RESULT_rauc_plain_S=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.2f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
  RESULT_rauc_plain_KB=$peak
  printf '  %-22s %8.2f s  %8.1f MiB peak  (%d runs)\n' rauc_plain "$RESULT_rauc_plain_S" "$(mib "$peak")" "$1" >&2
}

echo "Installing (3 runs each):" >&2
measure write_sync 3 "$reset" bash -c "cat '$IMG' > '$W/slot-b' && sync"
measure sha256sum 3 "" sha256sum "$IMG"
measure floor 3 "$reset" bash -c "{ cat '$IMG' > '$W/slot-b' && sync; } & sha256sum '$IMG' > /dev/null; wait"
check_installed "the floor"
ROTA_INSTALL=("$ROTA" install --conf "$W/system.conf" --override-boot-slot=A)
measure rota_verity 3 "$reset" "${ROTA_INSTALL[@]}" "$W/verity.raucb"
check_installed "rota install (verity)"
measure rota_plain 3 "$reset" "${ROTA_INSTALL[@]}" "$W/plain.raucb"
check_installed "rota install (plain)"
rauc_install 3

cat <<MD
### Installing a raw image (issue 3)

A $MIB MiB raw image (half random, a quarter zeros, a quarter text) from a local bundle
(verity $(bundle_mib "$W/verity.raucb") MiB, plain $(bundle_mib "$W/plain.raucb") MiB, gzip) into a file-backed slot on
the root filesystem (ext4 on virtio); bundle and image warm in the page cache, the target file
emptied before each run. $(nproc) cores. Command: \`bench/run install\`.

| operation | time | ratio | peak memory |
|---|---:|---:|---:|
| floor: \`cat image > slot; sync\` ‖ \`sha256sum image\` | ${RESULT_floor_S} s | 1.00 | $(mib "$RESULT_floor_KB") MiB |
| (part of the floor: \`cat image > slot; sync\` alone) | ${RESULT_write_sync_S} s | $(ratio "$RESULT_write_sync_S" "$RESULT_floor_S") × floor | $(mib "$RESULT_write_sync_KB") MiB |
| (part of the floor: \`sha256sum image\` alone) | ${RESULT_sha256sum_S} s | $(ratio "$RESULT_sha256sum_S" "$RESULT_floor_S") × floor | $(mib "$RESULT_sha256sum_KB") MiB |
| **\`rota install\`**, verity bundle | ${RESULT_rota_verity_S} s | $(ratio "$RESULT_rota_verity_S" "$RESULT_floor_S") × floor | $(mib "$RESULT_rota_verity_KB") MiB |
| **\`rota install\`**, plain bundle | ${RESULT_rota_plain_S} s | $(ratio "$RESULT_rota_plain_S" "$RESULT_floor_S") × floor | $(mib "$RESULT_rota_plain_KB") MiB |
| \`rauc install\` (Debian 1.8), same plain bundle | ${RESULT_rauc_plain_S} s | $(ratio "$RESULT_rauc_plain_S" "$RESULT_floor_S") × floor, $(ratio "$RESULT_rauc_plain_S" "$RESULT_rota_plain_S") × rota | $(mib "$RESULT_rauc_plain_KB") MiB (service) |
MD
