DESCRIPTION = "rota's bundle tool in the SDK, to build, sign, encrypt and inspect update bundles \
outside the build system."

require rota.inc

inherit_defer nativesdk
