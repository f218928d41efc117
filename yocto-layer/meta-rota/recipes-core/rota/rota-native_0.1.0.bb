DESCRIPTION = "rota's bundle tool built for the build host: the tool the bundle class runs to \
build, sign, encrypt and convert update bundles."

require rota.inc

inherit_defer native

RRECOMMENDS:${PN} = "squashfs-tools-native"
