SUMMARY = "A bundle deployed with its casync variant (a blob and a directory index) and chunk store"

inherit bundle
require rota-test-offline.inc

SRC_URI = " \
    file://core-image-minimal-${MACHINE}.rootfs.ext4 \
    file://container-test-image-${MACHINE}.rootfs.tar.gz;unpack=0 \
    file://extra.txt \
    file://app.bin \
"

RAUC_BUNDLE_COMPATIBLE = "rota Test Board"
RAUC_BUNDLE_VERSION = "3.0.0"
RAUC_BUNDLE_BUILD = "20261207120000"
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_SLOTS = "rootfs appfs"
RAUC_SLOT_rootfs = "core-image-minimal"
RAUC_SLOT_rootfs[fstype] = "ext4"
RAUC_SLOT_appfs = "container-test-image"
RAUC_SLOT_appfs[fstype] = "tar.gz"
# A converted verity bundle must stay over 4 KiB (as with RAUC): the index
# files alone would not.
RAUC_BUNDLE_EXTRA_FILES = "extra.txt app.bin"

RAUC_CASYNC_BUNDLE = "1"
CONVERT_ARGS = "--casync-args='--chunk-size=32768'"
