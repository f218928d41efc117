SUMMARY = "A bundle with rota's tree image type and the class defaults"

inherit bundle
require rota-test-offline.inc

SRC_URI = "file://core-image-minimal-${MACHINE}.rootfs.${ROTA_TREE_FSTYPE};unpack=0"

RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "core-image-minimal"
RAUC_SLOT_rootfs[type] = "tree"
