#!/usr/bin/env bash
# Issue 23's benchmark: 1, 2, 4 and 8 secondaries update to the same bundle
# (ROTA_BENCH_ECU_MIB, default 256 MiB) from an origin whose link is shaped
# to ROTA_BENCH_ECU_LINK (default 100mbit, tbf on the origin's side), once
# through the main's download cache (proxy-listen) and once each fetching
# directly. Every ECU is a real `rota service` (release build) in its own
# network namespace with its own bus and slots, as in
# tests/tests/system_update.rs, which holds the scenario. Prints, per run,
# the bytes the origin sent (also per bundle) and the wall time from
# Update to committed, then the ratios direct/proxy and each run's wall time
# against the floor: one curl of the bundle over the same shaped link.
set -euo pipefail
out=$BENCH_DIR/ecu.txt
ROTA_BIN_DIR=$PWD/target/release cargo test --locked -q -p rota-tests --test system_update \
  -- --ignored --exact benchmark_download_cache --nocapture --test-threads=1 | grep '^ecu-bench' | tee "$out" >&2
echo "Download cache vs direct (origin bytes and wall time, direct / proxy):" >&2
awk '
  /floor/ { split($3, kv, "="); floor = kv[2] }
  /mode=/ {
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    key = v["secondaries"]; bytes[key, v["mode"]] = v["origin_bytes"]; wall[key, v["mode"]] = v["wall_s"]; n[key] = 1
  }
  END {
    for (k in n) printf "  %s secondaries: direct/proxy origin bytes x%.2f, wall time x%.2f; wall time / curl floor: proxy %.2f, direct %.2f\n", k, bytes[k, "direct"] / bytes[k, "proxy"], wall[k, "direct"] / wall[k, "proxy"], wall[k, "proxy"] / floor, wall[k, "direct"] / floor
  }' "$out" | sort -n -k1 >&2
