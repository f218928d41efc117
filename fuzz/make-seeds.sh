#!/bin/sh
# Seeds the fuzz corpora (fuzz/corpus/<target>/, kept in the repository)
# from real inputs: tiny bundles of every format, the manifests of the unit
# tests, the example system.conf files with a drop-in, slot status files,
# a tree image's index, casync indexes and an archive made by Debian's
# casync, and HTTP responses of the kinds servers send. Needs a built
# `rota` and the test PKI (run the test suite once) and Debian's casync.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
P=$top/target/test-pki
R=$top/target/debug/rota
[ -f "$P/keyring.pem" ] || { echo "no test PKI in $P: run scripts/test first" >&2; exit 1; }
[ -x "$R" ] || { echo "no $R: cargo build first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
C=$here/corpus
for t in manifest open_bundle system_conf slot_status tree_index casync_index casync_archive http_response; do
  mkdir -p "$C/$t"
done

# Bundles and their manifests.
for f in plain verity crypt; do
  d=$work/$f; mkdir -p "$d"
  head -c 6000 /dev/urandom > "$d/a.img"
  printf '#!/bin/sh\n' > "$d/hook.sh"
  printf '[update]\ncompatible=c\nversion=1.0\n[bundle]\nformat=%s\n[hooks]\nfilename=hook.sh\nhooks=install-check\n[image.rootfs]\nfilename=a.img\nhooks=pre-install\n[meta.x]\nk=v\n' "$f" > "$d/manifest.raucm"
  rm -f "$C/open_bundle/$f.raucb"
  "$R" bundle --cert "$P/release.pem" --key "$P/release.key" --intermediate "$P/inter.pem" "$d" "$C/open_bundle/$f.raucb" >/dev/null 2>&1
  cp "$d/manifest.raucm" "$C/manifest/input-$f"
done
rm -f "$C/open_bundle/enc.raucb"
"$R" encrypt --to "$P/rsa-recipient.pem" "$C/open_bundle/crypt.raucb" "$C/open_bundle/enc.raucb" >/dev/null 2>&1
python3 - "$top/bundle-tool/src/manifest.rs" "$C/manifest" <<'PY'
import re, sys
src, out = sys.argv[1], sys.argv[2]
for i, block in enumerate(re.findall(r'"(\[update\][^"]*)"', open(src).read())):
    open(f"{out}/unit-{i}", "w").write(block.encode().decode("unicode_escape"))
PY

# system.conf: the examples, and one with two drop-ins (parts split at %%).
for f in "$top"/system.conf.d/*.conf; do
  cp "$f" "$C/system_conf/$(basename "$f")"
done
{ cat "$top/system.conf.d/grub-x86.conf"; printf '%%%%\n'; cat "$top/system.conf.d/drop-in-streaming.conf"
  printf '%%%%\n[slot.rootfs.1]\ninstall-same=false\n'; } > "$C/system_conf/with-drop-ins"

# Slot status, per slot and central.
cat > "$C/slot_status/per-slot" <<'S'
[slot]
bundle.compatible=Test Config
bundle.version=2024.08-1
bundle.description=soak
bundle.build=20240801
bundle.hash=9f2c5a0c3f1e4b7d8a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f
status=ok
sha256=c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00
size=262144
installed.transaction=0f4c2a1e-7b1d-4c3e-9a2b-1d2e3f4a5b6c
installed.timestamp=2026-12-07T14:00:00Z
installed.count=3
activated.timestamp=2026-12-07T14:00:01Z
activated.count=2
S
cat > "$C/slot_status/central" <<'S'
[system]
boot-id=5b3f3f9e-0a3c-4b44-9a53-2f3d8d1f0c11

[slot.rootfs.0]
bundle.compatible=Test Config
bundle.version=1
status=ok
installed.count=1

[slot.rootfs.1]
status=failed
installed.count=2
S

# A tree image's index, from a real tree bundle.
t=$work/tree; mkdir -p "$t/content/rootfs.tree/etc" "$t/content/rootfs.tree/bin"
printf 'x\n' > "$t/content/rootfs.tree/etc/release"
head -c 20000 /dev/urandom > "$t/content/rootfs.tree/bin/tool"
ln -s tool "$t/content/rootfs.tree/bin/link"
printf '[update]\ncompatible=c\nversion=1\n[bundle]\nformat=verity\n[image.rootfs]\nfilename=rootfs.tree\n' > "$t/content/manifest.raucm"
"$R" bundle --cert "$P/release.pem" --key "$P/release.key" --intermediate "$P/inter.pem" "$t/content" "$t/b.raucb" >/dev/null 2>&1
"$R" extract --keyring "$P/keyring.pem" "$t/b.raucb" "$t/out" >/dev/null 2>&1
cp "$t/out/rootfs.tree" "$C/tree_index/rootfs.tree"

# casync: a blob index, a directory index and an archive.
c=$work/casync; mkdir -p "$c/tree/sub" "$c/store"
head -c 70000 /dev/urandom > "$c/blob"
printf 'hello\n' > "$c/tree/a"; ln -s a "$c/tree/link"; head -c 3000 /dev/urandom > "$c/tree/sub/b"
rm -f "$C/casync_index/blob.caibx" "$C/casync_index/tree.caidx" "$C/casync_archive/tree.catar"
casync make --store="$c/store" "$C/casync_index/blob.caibx" "$c/blob" >/dev/null
casync make --store="$c/store" "$C/casync_index/tree.caidx" "$c/tree" >/dev/null
casync make "$C/casync_archive/tree.catar" "$c/tree" >/dev/null

# HTTP responses.
printf 'HTTP/1.1 200 OK\r\nContent-Length: 8\r\nAccept-Ranges: bytes\r\n\r\n01234567' > "$C/http_response/ok"
printf 'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-7/8192\r\nContent-Length: 8\r\n\r\n01234567' > "$C/http_response/partial"
printf 'HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */100\r\nContent-Length: 0\r\n\r\n' > "$C/http_response/unsatisfiable"
printf 'HTTP/1.1 302 Found\r\nLocation: /other.raucb\r\nContent-Length: 0\r\n\r\n' > "$C/http_response/redirect"
printf 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n' > "$C/http_response/chunked"
printf 'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n' > "$C/http_response/unavailable"
echo "seeded $(find "$C" -type f | wc -l) inputs in $C"
