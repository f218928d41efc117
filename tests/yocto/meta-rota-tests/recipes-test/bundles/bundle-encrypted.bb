SUMMARY = "A crypt bundle, also deployed encrypted for its recipients"

inherit bundle
require rota-test-offline.inc

SRC_URI = "file://core-image-minimal-${MACHINE}.rootfs.ext4"

RAUC_BUNDLE_COMPATIBLE = "rota Test Board"
RAUC_BUNDLE_BUILD = "20261207120000"
RAUC_BUNDLE_FORMAT = "crypt"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "core-image-minimal"
RAUC_SLOT_rootfs[fstype] = "ext4"
RAUC_ENCRYPT_CRYPT_BUNDLE = "1"
BUNDLE_BASENAME = "secret"
BUNDLE_LINK_NAME = "secret-latest"
