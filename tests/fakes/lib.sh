# Shared by the fakes: state directory and call recording.
: "${FAKE_STATE:?FAKE_STATE must be set}"
mkdir -p "$FAKE_STATE"
echo "$(basename "$0") $*" >>"$FAKE_STATE/calls.log"

# kv_get FILE KEY: prints the value, fails if unset.
kv_get() { grep -q "^$2=" "$1" 2>/dev/null || return 1; grep -m1 "^$2=" "$1" | cut -d= -f2-; }
# kv_set FILE KEY VALUE (empty VALUE deletes).
kv_set() {
  touch "$1"
  grep -v "^$2=" "$1" >"$1.tmp" || true
  [ -n "$3" ] && echo "$2=$3" >>"$1.tmp"
  mv "$1.tmp" "$1"
}
# erase_file FILE: every byte of FILE becomes 0xFF (erased flash), size kept.
erase_file() {
  head -c "$(stat -c %s "$1")" /dev/zero | tr '\0' '\377' | dd of="$1" conv=notrunc status=none
}
# empty_fs DEV: the fake filesystem on DEV (flashfs/<name>/) exists and is empty.
empty_fs() {
  rm -rf "$FAKE_STATE/flashfs/$(basename "$1")"
  mkdir -p "$FAKE_STATE/flashfs/$(basename "$1")"
}
