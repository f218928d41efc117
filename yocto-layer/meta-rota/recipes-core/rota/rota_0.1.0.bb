DESCRIPTION = "The rota update service on the device: installs signed bundles \
into A/B slots, answers on D-Bus as de.pengutronix.rauc, and answers as 'rauc' \
on the command line (a link), so RAUC's clients and scripts keep working."

require rota.inc

inherit systemd useradd

do_install:append() {
    # The multi-call binary answers as RAUC when called as rauc.
    ln -sf rota ${D}${bindir}/rauc

    install -d ${D}${datadir}/dbus-1/system.d ${D}${datadir}/dbus-1/system-services ${D}${datadir}/dbus-1/interfaces
    install -m 0644 ${S}/dbus-interfaces/dbus-1/de.pengutronix.rauc.conf ${D}${datadir}/dbus-1/system.d/
    install -m 0644 ${S}/dbus-interfaces/dbus-1/de.pengutronix.rauc.service ${D}${datadir}/dbus-1/system-services/
    install -m 0644 ${S}/dbus-interfaces/*.xml ${D}${datadir}/dbus-1/interfaces/

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/dbus-interfaces/systemd/rota.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/dbus-interfaces/systemd/rota-mark-good.service ${D}${systemd_system_unitdir}/
    sed -i -e 's,/usr/bin/,${bindir}/,g' ${D}${systemd_system_unitdir}/rota.service \
        ${D}${systemd_system_unitdir}/rota-mark-good.service ${D}${datadir}/dbus-1/system-services/de.pengutronix.rauc.service
}

PACKAGES =+ "${PN}-service ${PN}-mark-good ${PN}-bundle"

# Packages split off ${PN} take their files first (PACKAGES =+).
FILES:${PN}-bundle += "${bindir}/rota-bundle"
FILES:${PN}-service += "${datadir}/dbus-1/system.d ${datadir}/dbus-1/system-services ${systemd_system_unitdir}/rota.service"
FILES:${PN}-mark-good += "${systemd_system_unitdir}/rota-mark-good.service"
FILES:${PN}-dev += "${datadir}/dbus-1/interfaces"

SYSTEMD_PACKAGES = "${PN}-service ${PN}-mark-good"
SYSTEMD_SERVICE:${PN}-service = "rota.service"
SYSTEMD_SERVICE:${PN}-mark-good = "rota-mark-good.service"

# Members of this group may call the service's methods (the D-Bus policy).
USERADD_PACKAGES = "${PN}-service"
GROUPADD_PARAM:${PN}-service = "--system rota"

RDEPENDS:${PN}-service = "${PN} dbus"
RDEPENDS:${PN}-mark-good = "${PN}-service"
RDEPENDS:${PN}-bundle = "squashfs-tools"
RRECOMMENDS:${PN} = "virtual-rauc-conf ${PN}-service ${PN}-mark-good"

# Images and packagegroups that ask for RAUC get rota.
RPROVIDES:${PN} += "rauc"
RCONFLICTS:${PN} = "rauc"
