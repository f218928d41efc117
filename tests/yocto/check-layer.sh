#!/usr/bin/env bash
# oe-core's yocto-check-layer on meta-rota (wrynose snapshot, offline): the
# layer's README, LAYERSERIES_COMPAT, parse, world dependency resolution and
# signatures with and without the layer. About 15 minutes on 2 cores, so it
# is not part of scripts/test; tests/yocto/check.py covers the same ground
# faster (and on scarthgap too). Its unpacked snapshot and locale are reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${ROTA_YOCTO_WORK:-$root/target/yocto}"
# Unpacks the snapshot and builds the locale if check.py has not yet.
[ -d "$work/wrynose/src/openembedded-core" ] || /usr/bin/python3 "$root/tests/yocto/check.py" --release wrynose --skip-signatures --skip-oelint
src="$work/wrynose/src"
build="$work/wrynose/check-layer"
rm -rf "$build/conf"
mkdir -p "$build/conf"
: > "$build/conf/sanity.conf"
cat > "$build/conf/bblayers.conf" <<CONF
BBPATH = "\${TOPDIR}"
BBFILES ?= ""
BBLAYERS = "$src/openembedded-core/meta"
CONF
cat > "$build/conf/local.conf" <<CONF
MACHINE = "qemux86-64"
BB_NO_NETWORK = "1"
CONF_VERSION = "2"
INHERIT:remove = "uninative"
CONF
export LOCPATH="$work/locale" LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 BB_ENV_PASSTHROUGH_ADDITIONS=LOCPATH
export BBPATH="$build" BUILDDIR="$build"
export PATH="$src/bitbake/bin:$src/openembedded-core/scripts:$PATH"
cd "$build"
yocto-check-layer --machines qemux86-64 --output-log "$build/check-layer.log" "$root/yocto-layer/meta-rota"
