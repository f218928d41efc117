SUMMARY = "The variables every maintained meta-rauc release knows (scarthgap's included)"

inherit bundle
require rota-test-offline.inc

SRC_URI = " \
    file://core-image-minimal-${MACHINE}.rootfs.ext4 \
    file://zImage-${MACHINE}.bin \
    file://${MACHINE}-variant1.dtb \
    file://app.bin \
    file://hook.sh \
    file://extra.txt \
"

RAUC_BUNDLE_COMPATIBLE = "rota Test Board"
RAUC_BUNDLE_VERSION = "2.1.0"
RAUC_BUNDLE_DESCRIPTION = "common subset"
RAUC_BUNDLE_BUILD = "20261207120000"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_HOOKS[file] = "hook.sh"
RAUC_BUNDLE_HOOKS[hooks] = "install-check"

RAUC_BUNDLE_SLOTS = "rootfs kernel bootloader dtb appfs"
RAUC_SLOT_rootfs = "core-image-minimal"
RAUC_SLOT_rootfs[fstype] = "ext4"
RAUC_SLOT_rootfs[hooks] = "pre-install;post-install"
RAUC_SLOT_rootfs[adaptive] = "block-hash-index"
RAUC_SLOT_kernel = "linux-yocto"
RAUC_SLOT_kernel[type] = "kernel"
RAUC_SLOT_bootloader = "barebox"
RAUC_SLOT_bootloader[type] = "boot"
RAUC_SLOT_bootloader[offset] = "+1K"
RAUC_SLOT_dtb = "linux-yocto"
RAUC_SLOT_dtb[type] = "file"
RAUC_SLOT_dtb[name] = "dtb.variant-1"
RAUC_SLOT_dtb[file] = "${MACHINE}-variant1.dtb"
RAUC_SLOT_appfs = "app-image"
RAUC_SLOT_appfs[type] = "file"
RAUC_SLOT_appfs[file] = "app.bin"
RAUC_SLOT_appfs[rename] = "appfs.img"

RAUC_BUNDLE_EXTRA_FILES = "extra.txt deployed-notes.txt"
RAUC_META_SECTIONS = "release"
RAUC_META_release[channel] = "stable"
RAUC_MANIFEST_EXTRA_LINES = "[meta.extra]\nkey=value\n"
