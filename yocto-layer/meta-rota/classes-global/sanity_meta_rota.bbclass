# Warns once per build when meta-rota is in the layers but the distro did
# not enable it: the layer changes no recipe until DISTRO_FEATURES holds
# "rota" (or "rauc", so a distro moving from meta-rauc needs no edit).
# SKIP_META_ROTA_FEATURE_CHECK = "1" silences it.

addhandler rota_feature_check
rota_feature_check[eventmask] = "bb.event.SanityCheck"
python rota_feature_check() {
    if d.getVar('SKIP_META_ROTA_FEATURE_CHECK') == "1":
        return
    if not bb.utils.contains_any('DISTRO_FEATURES', 'rota rauc', True, False, d):
        bb.warn("meta-rota is in BBLAYERS but DISTRO_FEATURES has neither 'rota' nor 'rauc': "
                "add 'rota' to DISTRO_FEATURES to enable it, or set SKIP_META_ROTA_FEATURE_CHECK = \"1\".")
}
