SUMMARY = "An artifact image with converters: unpacked into the bundle, the archive kept"

inherit bundle
require rota-test-offline.inc

SRC_URI = "file://container-test-image-${MACHINE}.rootfs.tar.gz;unpack=0"

RAUC_BUNDLE_COMPATIBLE = "rota Test Board"
RAUC_BUNDLE_BUILD = "20261207120000"
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_SLOTS = "containers/test"
RAUC_SLOT_containers/test = "container-test-image"
RAUC_SLOT_containers/test[fstype] = "tar.gz"
RAUC_SLOT_containers/test[convert] = "tar-extract;keep"
