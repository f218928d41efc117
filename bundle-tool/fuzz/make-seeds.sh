#!/bin/sh
# Seeds the fuzz corpora: tiny real bundles of every format (and an
# encrypted one) for open_bundle, the manifests of the unit tests for
# manifest. Needs the test PKI (run the test suite once) and a built rota.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
P=$top/target/test-pki
R=$top/target/debug/rota
[ -f "$P/keyring.pem" ] || { echo "no test PKI in $P: run scripts/test first" >&2; exit 1; }
work=$(mktemp -d)
mkdir -p "$here/corpus/open_bundle" "$here/corpus/manifest"
for f in plain verity crypt; do
  d=$work/$f; mkdir -p "$d"
  head -c 6000 /dev/urandom > "$d/a.img"
  printf '#!/bin/sh\n' > "$d/hook.sh"
  printf '[update]\ncompatible=c\nversion=1.0\n[bundle]\nformat=%s\n[hooks]\nfilename=hook.sh\nhooks=install-check\n[image.rootfs]\nfilename=a.img\nhooks=pre-install\n[meta.x]\nk=v\n' "$f" > "$d/manifest.raucm"
  "$R" bundle --cert "$P/release.pem" --key "$P/release.key" "$d" "$here/corpus/open_bundle/$f.raucb" >/dev/null 2>&1
  cp "$d/manifest.raucm" "$here/corpus/manifest/input-$f"
done
"$R" encrypt --to "$P/rsa-recipient.pem" "$here/corpus/open_bundle/crypt.raucb" "$here/corpus/open_bundle/enc.raucb" >/dev/null 2>&1
python3 - "$top/bundle-tool/src/manifest.rs" "$here/corpus/manifest" <<'PY'
import re, sys
src, out = sys.argv[1], sys.argv[2]
for i, block in enumerate(re.findall(r'"(\[update\][^"]*)"', open(src).read())):
    open(f"{out}/unit-{i}", "w").write(block.encode().decode("unicode_escape"))
PY
rm -rf "$work"
