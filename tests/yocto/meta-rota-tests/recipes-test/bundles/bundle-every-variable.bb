SUMMARY = "A bundle recipe that uses every variable of meta-rauc's class"

inherit bundle
require rota-test-offline.inc

SRC_URI = " \
    file://core-image-minimal-${MACHINE}.rootfs.ext4 \
    file://zImage-${MACHINE}.bin \
    file://${MACHINE}-variant1.dtb \
    file://app.bin \
    file://firmware.img.zst;unpack=0 \
    file://container-test-image-${MACHINE}.rootfs.tar.gz;unpack=0 \
    file://hook.sh \
    file://extra.txt \
    file://docs \
    file://extras/note.txt \
"

RAUC_BUNDLE_COMPATIBLE = "rota Test Board"
RAUC_BUNDLE_VERSION = "2.1.0"
RAUC_BUNDLE_BUILD = "20261207120000"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_HOOKS[file] = "hook.sh"
RAUC_BUNDLE_HOOKS[hooks] = "install-check"

RAUC_BUNDLE_SLOTS = "rootfs kernel bootloader dtb appfs firmware datafs scratch containers/test"

RAUC_SLOT_rootfs = "core-image-minimal"
RAUC_SLOT_rootfs[fstype] = "ext4"
RAUC_SLOT_rootfs[hooks] = "pre-install;post-install"
RAUC_SLOT_rootfs[adaptive] = "block-hash-index"

RAUC_SLOT_kernel = "linux-yocto"
RAUC_SLOT_kernel[type] = "kernel"

RAUC_SLOT_bootloader = "barebox"
RAUC_SLOT_bootloader[type] = "boot"
RAUC_SLOT_bootloader[offset] = "-512"

RAUC_SLOT_dtb = "linux-yocto"
RAUC_SLOT_dtb[type] = "file"
RAUC_SLOT_dtb[name] = "dtb.variant-1"
RAUC_SLOT_dtb[file] = "${MACHINE}-variant1.dtb"

RAUC_SLOT_appfs = "app-image"
RAUC_SLOT_appfs[imagetype] = "raw"
RAUC_SLOT_appfs[file] = "app.bin"
RAUC_SLOT_appfs[rename] = "appfs.img"
RAUC_SLOT_appfs[depends] = "app-image:do_deploy"

RAUC_SLOT_firmware = "firmware-image"
RAUC_SLOT_firmware[type] = "file"
RAUC_SLOT_firmware[file] = "firmware.img.zst"
RAUC_SLOT_firmware[unpack] = "zst"

RAUC_SLOT_datafs[type] = "none"
RAUC_SLOT_datafs[hooks] = "install"

RAUC_SLOT_scratch[imagetype] = "emptyfs"

RAUC_SLOT_containers/test = "container-test-image"
RAUC_SLOT_containers/test[fstype] = "tar.gz"

RAUC_BUNDLE_EXTRA_FILES = "extra.txt docs/ extras/note.txt deployed-notes.txt"
RAUC_BUNDLE_EXTRA_DEPENDS = "notes-recipe other-recipe:do_compile"

RAUC_META_SECTIONS = "release support"
RAUC_META_release[channel] = "stable"
RAUC_META_release[priority] = "5"
RAUC_META_support[url] = "https://example.invalid/${PN}"

RAUC_MANIFEST_EXTRA_LINES = "[meta.extra]\nkey=value\n"

BUNDLE_ARGS = "--mksquashfs-args=-no-xattrs"
