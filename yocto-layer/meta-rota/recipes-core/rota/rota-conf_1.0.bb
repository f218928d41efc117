SUMMARY = "rota system configuration and verification keyring"
DESCRIPTION = "The device's system.conf and the keyring that verifies bundles. \
The files shipped here are placeholders: replace them in a bbappend \
(FILESEXTRAPATHS:prepend := \"${THISDIR}/files:\") or point RAUC_KEYRING_URI \
elsewhere, as with meta-rauc's rauc-conf."
# rota has no public home page yet
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://example.invalid/rota"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - the files shipped are placeholders under oe-core's MIT text
LIC_FILES_CHKSUM = "file://${COREBASE}/meta/COPYING.MIT;md5=3da9cfbcb788c80a0384361b4de20420"

RAUC_KEYRING_FILE ??= "ca.cert.pem"
RAUC_KEYRING_URI ??= "file://${RAUC_KEYRING_FILE}"

SRC_URI = "file://system.conf ${RAUC_KEYRING_URI}"

# scarthgap has no UNPACKDIR; its meta-rauc installs into /etc/rauc, newer
# ones into /usr/lib/rauc (rota reads /etc/rauc, /run/rauc, /usr/lib/rauc).
ROTA_CONF_SOURCES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
S = "${ROTA_CONF_SOURCES}"
ROTA_CONF_DIR ??= "${@'${nonarch_libdir}/rauc' if d.getVar('UNPACKDIR') else '${sysconfdir}/rauc'}"

INHIBIT_DEFAULT_DEPS = "1"
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    for f in system.conf ${RAUC_KEYRING_FILE}; do
        if ! grep -q '^[^#]' ${ROTA_CONF_SOURCES}/$f; then
            bbwarn "$f is still the placeholder of rota-conf: ship the project's own in a bbappend."
        fi
    done
    install -d ${D}${ROTA_CONF_DIR}
    install -m 0644 ${ROTA_CONF_SOURCES}/system.conf ${D}${ROTA_CONF_DIR}/system.conf
    install -m 0644 ${ROTA_CONF_SOURCES}/${RAUC_KEYRING_FILE} ${D}${ROTA_CONF_DIR}/${RAUC_KEYRING_FILE}
}

FILES:${PN} += "${ROTA_CONF_DIR}"
RPROVIDES:${PN} += "virtual-rauc-conf virtual-rota-conf"
