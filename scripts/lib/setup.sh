# Shared by scripts/demo, scripts/test and bench/run: installs what rota's
# build, tests and demo need on Debian 12 (run as root), idempotently.

ROTA_PACKAGES=(
  build-essential pkg-config libssl-dev openssl ca-certificates curl
  squashfs-tools cryptsetup-bin e2fsprogs dosfstools
  nginx-light rauc casync dbus fuse3 time hyperfine faketime
  grub-common mtd-utils attr libcap2-bin mtools zstd xz-utils gzip fdisk python3-dasbus
  softhsm2 libengine-pkcs11-openssl opensc
  python3-pytest python3-requests python3-pyasn1 python3-pyasn1-modules python3-aiohttp
  python3-pytest-timeout tree iproute2
  chrpath cpio diffstat gawk bzip2 locales python3-venv git
)

ensure_packages() {
  local missing=() p
  for p in "${ROTA_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "Installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    . "$HOME/.cargo/env"
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
  fi
}
