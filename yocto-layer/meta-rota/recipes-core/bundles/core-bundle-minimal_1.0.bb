SUMMARY = "Update bundle with core-image-minimal as root file system"
DESCRIPTION = "An example bundle recipe: one A/B root file system slot class \
in a verity bundle. Set RAUC_KEY_FILE and RAUC_CERT_FILE (in local.conf or a \
bbappend) before building it."
# rota has no public home page yet
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://example.invalid/rota"
LICENSE = "MIT"

# The slot images come from their recipes' deploy directories.
SRC_URI = ""

inherit bundle

RAUC_BUNDLE_COMPATIBLE ?= "Demo Board"
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "core-image-minimal"
RAUC_SLOT_rootfs[fstype] ?= "ext4"
RAUC_SLOT_rootfs[adaptive] ?= "block-hash-index"
