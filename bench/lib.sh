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
  median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
  printf -v "RESULT_${name}_S" '%.2f' "$median"
  printf -v "RESULT_${name}_KB" '%s' "$peak"
  printf '  %-22s %8.2f s  %8.1f MiB peak  (%d runs)\n' "$name" "$median" "$(echo "$peak / 1024" | bc -l)" "$runs" >&2
}

ratio() { echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; }
mib() { echo "scale=1; $1 / 1024" | bc -l | sed 's/^\./0./'; }
