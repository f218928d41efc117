# bundle.bbclass — builds signed update bundles with rota's bundle tool.
#
# A drop-in for meta-rauc's class of the same name: the variables, varflags,
# defaults, tasks, manifest text and deployed names are meta-rauc's, so a
# bundle recipe written for meta-rauc builds unchanged (see the layer's
# README.md for the full list and for what this class adds).
#
#   inherit bundle
#
#   RAUC_BUNDLE_COMPATIBLE = "My Product"
#   RAUC_BUNDLE_FORMAT = "verity"
#   RAUC_BUNDLE_SLOTS = "rootfs kernel"
#   RAUC_SLOT_rootfs = "core-image-minimal"
#   RAUC_SLOT_kernel = "linux-yocto"
#   RAUC_SLOT_kernel[type] = "kernel"
#
#   RAUC_KEY_FILE = "${TOPDIR}/keys/signing.key.pem"     # or a pkcs11: URI
#   RAUC_CERT_FILE = "${TOPDIR}/keys/signing.cert.pem"   # or a pkcs11: URI
#
# Beyond meta-rauc:
#   RAUC_INTERMEDIATE_CERT_FILE  intermediate certificates put into the signature
#   RAUC_SLOT_<slot>[type] = "tree"
#                                the image's root file system tree (its tar
#                                archive) as a rota tree image: installed as a
#                                file-level delta
#   ROTA_BUNDLE_TOOL             the bundle tool to run (rota-native's by default)
#   ROTA_BUNDLE_TOOL_DEPENDS     the recipe providing it ("rota-native")

LICENSE ?= "MIT"
DEPENDS += "${ROTA_BUNDLE_TOOL_DEPENDS} squashfs-tools-native"

# scarthgap (5.0) has no UNPACKDIR: sources land in WORKDIR there.
ROTA_BUNDLE_SOURCES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"
S = "${ROTA_BUNDLE_SOURCES}"
B = "${WORKDIR}/build"
BUNDLE_DIR = "${S}/bundle"

PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit nopackages image-artifact-names deploy

PACKAGES = ""
INHIBIT_DEFAULT_DEPS = "1"

do_patch[noexec] = "1"
do_compile[noexec] = "1"
do_install[noexec] = "1"
deltask do_populate_sysroot

# The manifest layout of the meta-rauc release this series pairs with:
# "legacy" (scarthgap) puts an image's hooks/adaptive lines after filename=.
ROTA_MANIFEST_LAYOUT ??= "${@'legacy' if 'scarthgap' in (d.getVar('LAYERSERIES_CORENAMES') or '').split() else 'current'}"

RAUC_BUNDLE_COMPATIBLE ??= "${@'${MACHINE}-${TARGET_VENDOR}' if d.getVar('ROTA_MANIFEST_LAYOUT') == 'legacy' else '${MACHINE}${TARGET_VENDOR}'}"
RAUC_BUNDLE_VERSION ??= "${PV}"
RAUC_BUNDLE_DESCRIPTION ??= "${SUMMARY}"
RAUC_BUNDLE_BUILD ??= "${DATETIME}"
RAUC_BUNDLE_BUILD[vardepsexclude] = "DATETIME"
RAUC_BUNDLE_FORMAT ??= ""
RAUC_IMAGE_FSTYPE ??= "${@((d.getVar('IMAGE_FSTYPES') or '').split() + [''])[0]}"
ROTA_TREE_FSTYPE ??= "${@([t for t in (d.getVar('IMAGE_FSTYPES') or '').split() if t.startswith('tar')] + ['tar'])[0]}"

RAUC_KEY_FILE ??= ""
RAUC_CERT_FILE ??= ""
RAUC_INTERMEDIATE_CERT_FILE ??= ""
RAUC_KEYRING_FILE ??= ""
RAUC_RECIPIENTS_CERT_FILE ??= ""
RAUC_ENCRYPT_CRYPT_BUNDLE ??= "0"
RAUC_CASYNC_BUNDLE ??= "0"
BUNDLE_ARGS ??= ""
CONVERT_ARGS ??= ""

ROTA_BUNDLE_TOOL ??= "${STAGING_BINDIR_NATIVE}/rota-bundle"
ROTA_BUNDLE_TOOL_DEPENDS ??= "rota-native"

RAUC_BUNDLE_COMPATIBLE[doc] = "The bundle's compatible string; it must equal the compatible of the target's system.conf."
RAUC_BUNDLE_VERSION[doc] = "The bundle's version string."
RAUC_BUNDLE_DESCRIPTION[doc] = "The bundle's description."
RAUC_BUNDLE_BUILD[doc] = "The bundle's build stamp."
RAUC_BUNDLE_FORMAT[doc] = "Bundle format: plain, verity or crypt (empty: plain, with a warning)."
RAUC_BUNDLE_SLOTS[doc] = "Slot classes (or artifact repository/name pairs) that get an image section, in this order."
RAUC_BUNDLE_HOOKS[doc] = "Hook script ([file], fetched through SRC_URI) and bundle hooks ([hooks])."
RAUC_BUNDLE_EXTRA_FILES[doc] = "More files or directories for the bundle, from DEPLOY_DIR_IMAGE or the fetched sources."
RAUC_BUNDLE_EXTRA_DEPENDS[doc] = "Recipes that deploy RAUC_BUNDLE_EXTRA_FILES: 'recipe' (do_deploy) or 'recipe:do_task'."
RAUC_IMAGE_FSTYPE[doc] = "File name extension of slot images of type 'image' (first of IMAGE_FSTYPES by default)."
ROTA_TREE_FSTYPE[doc] = "Archive extension of slot images of type 'tree' (first tar type of IMAGE_FSTYPES by default)."
RAUC_KEY_FILE[doc] = "Signing key: a PEM file or a pkcs11: URI."
RAUC_CERT_FILE[doc] = "Signing certificate: a PEM file or a pkcs11: URI."
RAUC_INTERMEDIATE_CERT_FILE[doc] = "Intermediate certificates (space-separated PEM files) put into the signature."
RAUC_KEYRING_FILE[doc] = "Keyring that checks the bundle when it is converted (casync) or encrypted."
RAUC_RECIPIENTS_CERT_FILE[doc] = "Recipient certificates an encrypted (crypt) bundle is made for."
RAUC_ENCRYPT_CRYPT_BUNDLE[doc] = "1: also deploy an encrypted copy of a crypt bundle."
RAUC_CASYNC_BUNDLE[doc] = "1: also deploy a casync bundle and its chunk store."
BUNDLE_ARGS[doc] = "Extra arguments of the bundle command (for example --mksquashfs-args=...)."
CONVERT_ARGS[doc] = "Extra arguments of the convert command (for example --casync-args=...)."
ROTA_BUNDLE_TOOL[doc] = "The bundle tool that builds, encrypts and converts bundles."
ROTA_BUNDLE_TOOL_DEPENDS[doc] = "The recipe that provides ROTA_BUNDLE_TOOL (empty for a tool from outside the build)."

# Slot varflags read (and expanded) per slot; 'unpack' is read as given.
RAUC_VARFLAGS_SLOTS = "name type fstype imagetype file hooks adaptive rename offset depends convert"
RAUC_VARFLAGS_HOOKS = "file hooks"

ROTA_DECOMPRESSORS = "bz2:bzip2 gz:gzip xz:xz zst:zstd"

def rota_decompressor(d, extension):
    """The tool (without -native) that unpacks files ending in .<extension>."""
    for pair in d.getVar('ROTA_DECOMPRESSORS').split():
        ext, tool = pair.split(':')
        if ext == extension:
            return tool
    return None

def rota_slot_flags(d, slot):
    """The varflags of RAUC_SLOT_<slot> this class reads."""
    expanded = d.getVar('RAUC_VARFLAGS_SLOTS').split()
    # Flags not in the list ('unpack') come back as written, unexpanded.
    flags = d.getVarFlags('RAUC_SLOT_%s' % slot, expand=expanded) or {}
    return {k: v for k, v in flags.items() if k in expanded or k == 'unpack'}

def rota_hook_flags(d):
    return d.getVarFlags('RAUC_BUNDLE_HOOKS', expand=d.getVar('RAUC_VARFLAGS_HOOKS').split()) or {}

def rota_slot_kind(flags):
    return flags.get('type') or 'image'

def rota_slot_has_file(flags):
    return flags.get('imagetype') != 'emptyfs' and rota_slot_kind(flags) != 'none'

def rota_slot_files(d, slot, flags):
    """(file to look up, name inside the bundle) of a slot with a file."""
    kind = rota_slot_kind(flags)
    recipe = d.getVar('RAUC_SLOT_%s' % slot)
    image_stem = '%s%s%s' % (recipe, d.getVar('IMAGE_MACHINE_SUFFIX'), d.getVar('IMAGE_NAME_SUFFIX'))
    if kind == 'image':
        source = flags.get('file') or '%s.%s' % (image_stem, flags.get('fstype', d.getVar('RAUC_IMAGE_FSTYPE')))
        name = source
    elif kind == 'tree':
        fstype = flags.get('fstype', d.getVar('ROTA_TREE_FSTYPE'))
        source = flags.get('file') or '%s.%s' % (image_stem, fstype)
        base = os.path.basename(source)
        name = (base[:-len('.' + fstype)] if base.endswith('.' + fstype) else base) + '.tree'
    elif kind == 'kernel':
        source = flags.get('file') or 'zImage-%s.bin' % d.getVar('MACHINE')
        name = source + '.img'
    elif kind == 'boot':
        source = flags.get('file') or 'barebox.img'
        name = source
    elif kind == 'file':
        source = flags.get('file')
        if not source:
            bb.fatal("Slot '%s' has [type] 'file' but no [file] varflag naming it" % slot)
        name = source + '.img'
    else:
        bb.fatal("Slot '%s' has an unknown [type] '%s' (image, tree, kernel, boot, file or none)" % (slot, kind))
    if 'unpack' in flags:
        # The last '.<ext>' goes, whatever follows it (a kernel keeps '.img').
        head, sep, tail = name.rpartition('.' + flags['unpack'])
        if sep:
            name = head + tail
    name = flags.get('rename', name)
    return source, os.path.basename(name)

def rota_manifest_text(d):
    """The manifest meta-rauc's class writes for this recipe (without the
    sha256=/size= lines, which the bundle tool adds)."""
    legacy = d.getVar('ROTA_MANIFEST_LAYOUT') == 'legacy'
    out = ['[update]\n',
           'compatible=%s\n' % d.getVar('RAUC_BUNDLE_COMPATIBLE'),
           'version=%s\n' % d.getVar('RAUC_BUNDLE_VERSION'),
           'description=%s\n' % d.getVar('RAUC_BUNDLE_DESCRIPTION'),
           'build=%s\n' % d.getVar('RAUC_BUNDLE_BUILD'),
           '\n']

    bundle_format = d.getVar('RAUC_BUNDLE_FORMAT')
    if not bundle_format:
        bb.warn("RAUC_BUNDLE_FORMAT is not set: the bundle gets the legacy 'plain' format. "
                "Set RAUC_BUNDLE_FORMAT = \"verity\" unless a device needs 'plain'.")
    elif bundle_format != 'plain':
        out += ['[bundle]\n', 'format=%s\n' % bundle_format, '\n']

    hooks = rota_hook_flags(d)
    if 'file' in hooks:
        out += ['[hooks]\n', 'filename=%s\n' % hooks['file']]
        if 'hooks' in hooks:
            out.append('hooks=%s\n' % hooks['hooks'])
        out.append('\n')
    elif 'hooks' in hooks:
        bb.warn("RAUC_BUNDLE_HOOKS[hooks] is set but RAUC_BUNDLE_HOOKS[file] is not: the bundle has no hook script")

    for slot in (d.getVar('RAUC_BUNDLE_SLOTS') or '').split():
        flags = rota_slot_flags(d, slot)
        if 'hooks' in flags and 'file' not in hooks:
            bb.warn("Slot '%s' has [hooks] but RAUC_BUNDLE_HOOKS[file] is not set" % slot)
        options = []
        for key in ('hooks', 'adaptive', 'convert'):
            if key in flags:
                options.append('%s=%s\n' % (key, flags[key]))
        if flags.get('imagetype'):
            options.append('type=%s\n' % flags['imagetype'])
        out.append('[image.%s]\n' % flags.get('name', slot))
        if not rota_slot_has_file(flags):
            # As meta-rauc: a section without a file ends without a blank line.
            out += options
            continue
        filename = 'filename=%s\n' % rota_slot_files(d, slot, flags)[1]
        out += [filename] + options if legacy else options + [filename]
        out.append('\n')

    for section in (d.getVar('RAUC_META_SECTIONS') or '').split():
        out.append('[meta.%s]\n' % section)
        for key in (d.getVarFlags('RAUC_META_%s' % section) or {}):
            out.append('%s=%s\n' % (key, d.getVarFlag('RAUC_META_%s' % section, key)))
        out.append('\n')

    out.append((d.getVar('RAUC_MANIFEST_EXTRA_LINES') or '').replace('\\n', '\n'))
    return ''.join(out)

def rota_find_input(d, name):
    """A file (or directory) of the deploy directory, else of the fetched sources."""
    for top in (d.getVar('DEPLOY_DIR_IMAGE'), d.getVar('ROTA_BUNDLE_SOURCES')):
        path = os.path.join(top, name)
        if os.path.isfile(path) or os.path.isdir(path):
            return path
    return None

def rota_stage_slot(d, slot, flags, bundle_dir):
    import shutil
    import subprocess
    source, name = rota_slot_files(d, slot, flags)
    dest = os.path.join(bundle_dir, name)
    deployed = os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), source)
    fetched = os.path.join(d.getVar('ROTA_BUNDLE_SOURCES'), source)
    src = deployed if os.path.isfile(deployed) else fetched if os.path.isfile(fetched) else None
    if src is None:
        bb.fatal("Slot '%s': '%s' is neither in DEPLOY_DIR_IMAGE nor in the fetched sources" % (slot, source))
    offset = flags.get('offset')
    if src == deployed and rota_slot_kind(flags) == 'boot' and offset not in (None, '', '0', '+0'):
        if 'unpack' in flags:
            bb.fatal("Slot '%s': [unpack] cannot be combined with [offset]" % slot)
        # dd units apply ('1K', '2MB'); '+N' or 'N' prepends N bytes, '-N' drops N.
        how, amount = ('skip', offset[1:]) if offset.startswith('-') else ('seek', offset.lstrip('+'))
        subprocess.check_call(['dd', 'if=%s' % src, 'of=%s' % dest, 'iflag=skip_bytes',
                               'oflag=seek_bytes', '%s=%s' % (how, amount)])
    elif 'unpack' in flags:
        tool = rota_decompressor(d, flags['unpack'])
        if not tool:
            bb.fatal("Slot '%s': [unpack] '%s' is none of bz2, gz, xz, zst" % (slot, flags['unpack']))
        with open(dest, 'wb') as out:
            subprocess.check_call([tool, '-d', '-c', src], stdout=out)
    else:
        shutil.copy(src, dest)
    bb.note("slot '%s': %s -> bundle/%s" % (slot, src, name))

def rota_stage_extra_files(d, bundle_dir):
    import subprocess
    for entry in (d.getVar('RAUC_BUNDLE_EXTRA_FILES') or '').split():
        src = rota_find_input(d, entry)
        if not src:
            bb.fatal("Extra file '%s' is neither in DEPLOY_DIR_IMAGE nor in the fetched sources" % entry)
        rel = entry.strip('/')
        dest_dir = os.path.join(bundle_dir, os.path.dirname(rel))
        bb.utils.mkdirhier(dest_dir)
        # Recursive, modes and times kept, a named link followed, inner links kept.
        subprocess.check_call(['cp', '-R', '-p', '-H', '-f', src, dest_dir + '/'])

# The slots' recipes are known only once the recipe is parsed: the task
# dependencies are wired here, as meta-rauc's class wires them.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    for slot in (d.getVar('RAUC_BUNDLE_SLOTS') or '').split():
        flags = rota_slot_flags(d, slot)
        if flags.get('imagetype') == 'emptyfs':
            continue
        kind = rota_slot_kind(flags)
        recipe = d.getVar('RAUC_SLOT_%s' % slot)
        if not recipe and kind != 'none':
            bb.fatal("Slot '%s' names no recipe: set RAUC_SLOT_%s = \"<recipe>\"" % (slot, slot))
        d.appendVarFlag('do_unpack', 'vardeps', ' RAUC_SLOT_%s' % slot)
        if flags.get('depends'):
            d.appendVarFlag('do_unpack', 'depends', ' ' + flags['depends'])
            continue
        if kind in ('image', 'tree'):
            d.appendVarFlag('do_unpack', 'depends', ' %s:do_image_complete' % recipe)
            d.appendVarFlag('do_rm_work_all', 'depends', ' %s:do_rm_work_all' % recipe)
        elif kind != 'none':
            d.appendVarFlag('do_unpack', 'depends', ' %s:do_deploy' % recipe)
        if flags.get('unpack'):
            tool = rota_decompressor(d, flags['unpack'])
            if not tool:
                bb.fatal("Slot '%s': [unpack] '%s' is none of bz2, gz, xz, zst" % (slot, flags['unpack']))
            d.appendVar('DEPENDS', ' %s-native' % tool)

    for entry in (d.getVar('RAUC_BUNDLE_EXTRA_DEPENDS') or '').split():
        recipe, _, task = entry.partition(':')
        d.appendVarFlag('do_unpack', 'depends', ' %s:%s' % (recipe, task or 'do_deploy'))

    # Signing material that is a file re-runs do_bundle when it changes.
    files = [f for v in ('RAUC_KEY_FILE', 'RAUC_CERT_FILE', 'RAUC_INTERMEDIATE_CERT_FILE')
             for f in (d.getVar(v) or '').split() if not f.startswith('pkcs11:')]
    d.appendVarFlag('do_bundle', 'file-checksums', ''.join(' %s:False' % f for f in files))
}

python do_configure() {
    import shutil
    import stat
    bundle_dir = d.getVar('BUNDLE_DIR')
    bb.utils.mkdirhier(bundle_dir)
    with open(os.path.join(bundle_dir, 'manifest.raucm'), 'w') as manifest:
        manifest.write(rota_manifest_text(d))

    for slot in (d.getVar('RAUC_BUNDLE_SLOTS') or '').split():
        flags = rota_slot_flags(d, slot)
        if rota_slot_has_file(flags):
            rota_stage_slot(d, slot, flags, bundle_dir)

    hook = rota_hook_flags(d).get('file')
    if hook:
        src = os.path.join(d.getVar('ROTA_BUNDLE_SOURCES'), hook)
        if not os.path.isfile(src):
            bb.fatal("RAUC_BUNDLE_HOOKS[file] '%s' is not in the fetched sources: add it to SRC_URI" % hook)
        dest = os.path.join(bundle_dir, hook)
        shutil.copy(src, dest)
        os.chmod(dest, os.stat(dest).st_mode | stat.S_IXUSR)

    rota_stage_extra_files(d, bundle_dir)
}
do_configure[cleandirs] = "${BUNDLE_DIR}"
do_configure[vardeps] += "RAUC_BUNDLE_HOOKS[file] RAUC_BUNDLE_HOOKS[hooks] ROTA_MANIFEST_LAYOUT"

# Passed to the bundle tool when set (kept out of signatures and logs).
RAUC_PKCS11_MODULE ??= ""
RAUC_PKCS11_PIN ??= ""

fakeroot do_bundle() {
    if [ -z "${RAUC_KEY_FILE}" ]; then
        bbfatal "RAUC_KEY_FILE is not set: name the signing key (a PEM file or a pkcs11: URI)."
    fi
    if [ -z "${RAUC_CERT_FILE}" ]; then
        bbfatal "RAUC_CERT_FILE is not set: name the signing certificate (a PEM file or a pkcs11: URI)."
    fi
    if [ -n "${RAUC_PKCS11_MODULE}" ]; then
        export RAUC_PKCS11_MODULE="${RAUC_PKCS11_MODULE}"
    fi
    if [ -n "${RAUC_PKCS11_PIN}" ]; then
        export RAUC_PKCS11_PIN="${RAUC_PKCS11_PIN}"
    fi

    intermediates=""
    for f in ${RAUC_INTERMEDIATE_CERT_FILE}; do
        intermediates="$intermediates --intermediate=$f"
    done

    ${ROTA_BUNDLE_TOOL} bundle --debug \
        --cert="${RAUC_CERT_FILE}" --key="${RAUC_KEY_FILE}" $intermediates \
        ${BUNDLE_ARGS} ${BUNDLE_DIR} ${B}/bundle.raucb

    if [ "${RAUC_ENCRYPT_CRYPT_BUNDLE}" = "1" ]; then
        if [ "${RAUC_BUNDLE_FORMAT}" != "crypt" ]; then
            bbfatal "RAUC_ENCRYPT_CRYPT_BUNDLE needs RAUC_BUNDLE_FORMAT = \"crypt\"."
        fi
        if [ -z "${RAUC_RECIPIENTS_CERT_FILE}" ]; then
            bbfatal "RAUC_ENCRYPT_CRYPT_BUNDLE needs RAUC_RECIPIENTS_CERT_FILE (the recipients' certificates)."
        fi
        if [ -z "${RAUC_KEYRING_FILE}" ]; then
            bbfatal "RAUC_ENCRYPT_CRYPT_BUNDLE needs RAUC_KEYRING_FILE to check the bundle it encrypts."
        fi
        ${ROTA_BUNDLE_TOOL} encrypt --debug --to="${RAUC_RECIPIENTS_CERT_FILE}" \
            --keyring="${RAUC_KEYRING_FILE}" ${B}/bundle.raucb ${B}/encrypted-bundle.raucb
    fi

    if [ "${RAUC_CASYNC_BUNDLE}" = "1" ]; then
        if [ -z "${RAUC_KEYRING_FILE}" ]; then
            bbfatal "RAUC_CASYNC_BUNDLE needs RAUC_KEYRING_FILE to check the bundle it converts."
        fi
        ${ROTA_BUNDLE_TOOL} convert --debug --trust-environment \
            --cert="${RAUC_CERT_FILE}" --key="${RAUC_KEY_FILE}" $intermediates \
            --keyring="${RAUC_KEYRING_FILE}" ${CONVERT_ARGS} \
            ${B}/bundle.raucb ${B}/casync-bundle.raucb
    fi
}
do_bundle[dirs] = "${B}"
do_bundle[cleandirs] = "${B}"
do_bundle[vardepsexclude] += "RAUC_PKCS11_PIN"
addtask bundle after do_configure

BUNDLE_BASENAME ??= "${PN}"
BUNDLE_NAME ??= "${BUNDLE_BASENAME}-${MACHINE}-${DATETIME}"
BUNDLE_NAME[vardepsexclude] = "DATETIME"
BUNDLE_LINK_NAME ??= "${BUNDLE_BASENAME}-${MACHINE}"
BUNDLE_EXTENSION ??= ".raucb"
BUNDLE_BASENAME[doc] = "Base of the deployed bundle's name."
BUNDLE_NAME[doc] = "Name (without extension) of the deployed bundle."
BUNDLE_LINK_NAME[doc] = "Name (without extension) of the link to the newest deployed bundle."
BUNDLE_EXTENSION[doc] = "Extension of deployed bundles."

ENCRYPTED_BUNDLE_BASENAME ??= "encrypted-${BUNDLE_BASENAME}"
ENCRYPTED_BUNDLE_NAME ??= "${ENCRYPTED_BUNDLE_BASENAME}-${MACHINE}-${DATETIME}"
ENCRYPTED_BUNDLE_NAME[vardepsexclude] = "DATETIME"
ENCRYPTED_BUNDLE_LINK_NAME ??= "${ENCRYPTED_BUNDLE_BASENAME}-${MACHINE}"
ENCRYPTED_BUNDLE_EXTENSION ??= "${BUNDLE_EXTENSION}"

CASYNC_BUNDLE_BASENAME ??= "casync-${BUNDLE_BASENAME}"
CASYNC_BUNDLE_NAME ??= "${CASYNC_BUNDLE_BASENAME}-${MACHINE}-${DATETIME}"
CASYNC_BUNDLE_NAME[vardepsexclude] = "DATETIME"
CASYNC_BUNDLE_LINK_NAME ??= "${CASYNC_BUNDLE_BASENAME}-${MACHINE}"
CASYNC_BUNDLE_EXTENSION ??= "${BUNDLE_EXTENSION}"

# Bundles are signed artefacts of this build: never taken from sstate.
SSTATE_SKIP_CREATION:task-deploy = "1"

do_deploy() {
    install -d ${DEPLOYDIR}
    install -m 0644 ${B}/bundle.raucb ${DEPLOYDIR}/${BUNDLE_NAME}${BUNDLE_EXTENSION}
    ln -sf ${BUNDLE_NAME}${BUNDLE_EXTENSION} ${DEPLOYDIR}/${BUNDLE_LINK_NAME}${BUNDLE_EXTENSION}

    if [ "${RAUC_ENCRYPT_CRYPT_BUNDLE}" = "1" ]; then
        install -m 0644 ${B}/encrypted-bundle.raucb ${DEPLOYDIR}/${ENCRYPTED_BUNDLE_NAME}${ENCRYPTED_BUNDLE_EXTENSION}
        ln -sf ${ENCRYPTED_BUNDLE_NAME}${ENCRYPTED_BUNDLE_EXTENSION} ${DEPLOYDIR}/${ENCRYPTED_BUNDLE_LINK_NAME}${ENCRYPTED_BUNDLE_EXTENSION}
    fi

    if [ "${RAUC_CASYNC_BUNDLE}" = "1" ]; then
        install -m 0644 ${B}/casync-bundle.raucb ${DEPLOYDIR}/${CASYNC_BUNDLE_NAME}${CASYNC_BUNDLE_EXTENSION}
        cp -r ${B}/casync-bundle.castr ${DEPLOYDIR}/${CASYNC_BUNDLE_NAME}.castr
        ln -sf ${CASYNC_BUNDLE_NAME}${CASYNC_BUNDLE_EXTENSION} ${DEPLOYDIR}/${CASYNC_BUNDLE_LINK_NAME}${CASYNC_BUNDLE_EXTENSION}
        ln -sf ${CASYNC_BUNDLE_NAME}.castr ${DEPLOYDIR}/${CASYNC_BUNDLE_LINK_NAME}.castr
    fi
}
addtask deploy after do_bundle before do_build
