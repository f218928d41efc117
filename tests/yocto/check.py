#!/usr/bin/env python3
"""meta-rota against the pinned oe-core + bitbake snapshots, offline.

For each release (wrynose, scarthgap):
  1. oe-core + meta-rota + the test layer parse with no warning and no error;
  2. adding meta-rota alone changes no task signature of oe-core recipes
     (checked on a sample of recipes, with and without the layer);
  3. the test bundle recipes run do_deploy: the manifests equal the expected
     ones in tests/yocto/expected/<release>/ byte for byte, the class wired
     the dependencies meta-rauc's does, and the deployed bundles (names and
     links as meta-rauc deploys them) pass `rota info --keyring` and, for
     formats it knows, Debian's `rauc info --keyring`.
oelint-adv (from PyPI, in a venv under the work directory) lints the layer.

Usage: tests/yocto/check.py [--work DIR] [--release NAME]... [--update]
       [--referee-meta-rauc GITDIR] [--signature-release NAME]...
       [--skip-signatures] [--skip-oelint]
  --update                write the manifests found as the expected ones
  --referee-meta-rauc     also build the manifests with meta-rauc's own class
                          (its wrynose/scarthgap branch from that git dir) and
                          compare them with ours
The snapshots are looked for in ROTA_YOCTO_SNAPSHOTS, ../shared/yocto or
/work/shared/yocto.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "yocto"
LAYER = ROOT / "yocto-layer" / "meta-rota"
TEST_LAYER = HERE / "meta-rota-tests"
RELEASES = {
    "wrynose": ("openembedded-core-yocto-6.0.2.tar.zst", "bitbake-yocto-6.0.2.tar.zst"),
    "scarthgap": ("openembedded-core-yocto-5.0.19.tar.zst", "bitbake-yocto-5.0.19.tar.zst"),
}
RECIPES = ["bundle-every-variable", "bundle-common", "bundle-tree", "bundle-encrypted", "bundle-convert",
           "bundle-casync"]
# Recipes whose manifest is checked (do_configure) but not bundled.
CONFIGURE_ONLY = []
# Recipes that leave RAUC_BUNDLE_BUILD at its default (DATETIME).
DEFAULT_BUILD = {"bundle-tree"}
MACHINE = "qemux86-64"
# oe-core recipes whose signatures must not change when meta-rota is added.
SIGNATURE_SAMPLE = ["busybox", "openssl", "core-image-minimal"]
OELINT_VERSION = "9.11.2"


def log(msg):
    print(f"yocto: {msg}", flush=True)


def fail(msg):
    print(f"yocto: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def snapshots_dir():
    for cand in (os.environ.get("ROTA_YOCTO_SNAPSHOTS"), ROOT.parent / "shared" / "yocto", "/work/shared/yocto"):
        if cand and (Path(cand) / RELEASES["wrynose"][0]).is_file():
            return Path(cand)
    fail("no Yocto snapshots (set ROTA_YOCTO_SNAPSHOTS)")


def unpack(work, release):
    """oe-core and bitbake of a release under work/<release>/src (once per archive)."""
    src = work / release / "src"
    archives = [snapshots_dir() / a for a in RELEASES[release]]
    stamp = hashlib.sha256("".join(f"{a.name}:{a.stat().st_size}" for a in archives).encode()).hexdigest()
    if (src / ".stamp").is_file() and (src / ".stamp").read_text() == stamp:
        return src
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for a in archives:
        subprocess.run(["tar", "--zstd", "-x", "-f", str(a), "-C", str(src)], check=True)
    (src / ".stamp").write_text(stamp)
    return src


def locale_dir(work):
    """en_US.UTF-8, which bitbake needs, built once without touching the system."""
    loc = work / "locale"
    if not (loc / "en_US.UTF-8").is_dir():
        loc.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(loc / "en_US.UTF-8")],
                           capture_output=True, text=True)
        # localedef warns about ISO C conformance and still writes the locale.
        if not (loc / "en_US.UTF-8").is_dir():
            fail(f"localedef: {r.stderr}")
    return loc


def pki(work):
    """The test PKI of the Rust tests (tests/pki/make-pki.sh)."""
    out = work / "pki"
    script = ROOT / "tests" / "pki" / "make-pki.sh"
    stamp = hashlib.sha256(script.read_bytes()).hexdigest()
    if not (out / ".stamp").is_file() or (out / ".stamp").read_text() != stamp:
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sh", str(script), str(out)], check=True, capture_output=True)
        (out / ".stamp").write_text(stamp)
    return out


def inputs(work):
    """The slot images and files the test recipes fetch (file://) or find deployed."""
    d = work / "inputs"
    shutil.rmtree(d, ignore_errors=True)
    (d / "docs").mkdir(parents=True)
    (d / "extras").mkdir()
    tree = work / "rootfs-tree"
    shutil.rmtree(tree, ignore_errors=True)
    for sub in ("bin", "etc", "usr/lib"):
        (tree / sub).mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=rota-test\nVERSION_ID=2.1.0\n")
    (tree / "bin" / "tool").write_bytes(os.urandom(20000))
    (tree / "bin" / "tool").chmod(0o755)
    os.symlink("../bin/tool", tree / "usr" / "lib" / "tool-link")
    rootfs = d / f"core-image-minimal-{MACHINE}.rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(tree), str(rootfs), "8M"], check=True, capture_output=True)
    for ext, flag in (("tar.zst", "--zstd"), ("tar.gz", "--gzip"), ("tar.bz2", "--bzip2")):
        for name in (f"core-image-minimal-{MACHINE}.rootfs.{ext}", f"container-test-image-{MACHINE}.rootfs.{ext}"):
            subprocess.run(["tar", flag, "--numeric-owner", "--owner=0", "--group=0", "-c", "-f", str(d / name),
                            "-C", str(tree), "."], check=True)
    (d / f"zImage-{MACHINE}.bin").write_bytes(os.urandom(64 * 1024))
    (d / f"{MACHINE}-variant1.dtb").write_bytes(os.urandom(8 * 1024))
    (d / "app.bin").write_bytes(os.urandom(128 * 1024))
    (d / "firmware.img").write_bytes(os.urandom(96 * 1024))
    subprocess.run(["zstd", "-q", "-f", "--rm", str(d / "firmware.img")], check=True)
    (d / "hook.sh").write_text("#!/bin/sh\n# bundle hook of the test recipes\nexit 0\n")
    (d / "hook.sh").chmod(0o644)  # the class makes it executable
    (d / "extra.txt").write_text("extra file\n")
    (d / "docs" / "README").write_text("docs\n")
    (d / "extras" / "note.txt").write_text("note\n")
    deployed = d / "deploy"
    deployed.mkdir()
    (deployed / "barebox.img").write_bytes(b"\x55" * 512 + os.urandom(32 * 1024))
    (deployed / "deployed-notes.txt").write_text("from the deploy directory\n")
    return d


class Build:
    """One build directory of a release, with a fixed set of layers."""

    def __init__(self, work, release, name, layers, extra_conf=""):
        self.release = release
        self.src = unpack(work, release)
        self.dir = work / release / name
        conf = self.dir / "conf"
        shutil.rmtree(conf, ignore_errors=True)
        conf.mkdir(parents=True)
        oe = self.src / "openembedded-core"
        (conf / "sanity.conf").write_text("")
        all_layers = [oe / "meta"] + layers
        (conf / "bblayers.conf").write_text(
            'BBPATH = "${TOPDIR}"\nBBFILES ?= ""\nBBLAYERS = "' + " ".join(str(p) for p in all_layers) + '"\n')
        (conf / "local.conf").write_text(
            f'MACHINE = "{MACHINE}"\nDISTRO = ""\nBB_NO_NETWORK = "1"\n'
            'BB_NUMBER_THREADS = "2"\nPARALLEL_MAKE = "-j 2"\n'
            f'SSTATE_DIR = "{work}/{release}/sstate"\nDL_DIR = "{work}/{release}/downloads"\n'
            f'PERSISTENT_DIR = "{self.dir}/cache"\n'
            'CONF_VERSION = "2"\nINHERIT:remove = "uninative"\n' + extra_conf)
        self.env = dict(os.environ)
        self.env.update({
            "LOCPATH": str(locale_dir(work)),
            "LANG": "en_US.UTF-8",
            "LC_ALL": "en_US.UTF-8",
            "BB_ENV_PASSTHROUGH_ADDITIONS": "LOCPATH",
            "BBPATH": str(self.dir),
            "BUILDDIR": str(self.dir),
            "PATH": f"{self.src / 'bitbake' / 'bin'}:{oe / 'scripts'}:{os.environ['PATH']}",
            "PYTHONDONTWRITEBYTECODE": "1",
        })

    def run(self, *args, check=True):
        r = subprocess.run(list(args), cwd=self.dir, env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            fail(f"{self.release}: {' '.join(args)} exited {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}")
        return r

    def getvar(self, recipe, var):
        return self.getvars([recipe], [var])[recipe][var]

    def getvars(self, recipes, names):
        """Variables of several recipes from one bitbake session (tinfoil)."""
        script = (
            "import json, sys\n"
            "import bb.tinfoil\n"
            "out = {}\n"
            "with bb.tinfoil.Tinfoil() as t:\n"
            "    t.prepare(quiet=2)\n"
            f"    for r in {recipes!r}:\n"
            "        d = t.parse_recipe(r)\n"
            f"        out[r] = {{v: d.getVar(v) or '' for v in {names!r}}}\n"
            "print('VARS:' + json.dumps(out))\n")
        env = dict(self.env, PYTHONPATH=str(self.src / "bitbake" / "lib"))
        r = subprocess.run([sys.executable, "-c", script], cwd=self.dir, env=env, capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("VARS:")]
        if r.returncode != 0 or not line:
            fail(f"{self.release}: reading {names} of {recipes}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return json.loads(line[0][5:])


def check_clean_parse(b):
    r = b.run("bitbake", "-p")
    noise = [l for l in (r.stdout + r.stderr).splitlines() if re.match(r"^(WARNING|ERROR|NOTE: .*error)", l)]
    summary = re.search(r"Parsing of (\d+) \.bb files complete \((\d+) cached, (\d+) parsed\)\. (\d+) targets, (\d+) skipped", r.stdout)
    if noise:
        fail(f"{b.release}: parsing printed:\n" + "\n".join(noise))
    log(f"{b.release}: parse clean ({summary.group(0) if summary else 'summary not found'})")


def signatures(b, recipes):
    """Task hash of every task of `recipes`, as bitbake -S none writes them."""
    # TMPDIR is tmp/ on wrynose, tmp-glibc/ on scarthgap.
    for old in b.dir.glob("tmp*/stamps"):
        shutil.rmtree(old, ignore_errors=True)
    b.run("bitbake", "-S", "none", *recipes)
    stamps = next(b.dir.glob("tmp*/stamps"), b.dir / "tmp" / "stamps")
    sigs = {}
    for p in stamps.rglob("*.sigdata.*"):
        rel = p.relative_to(stamps)
        sigs[str(rel).split(".sigdata.")[0]] = p.name.split(".sigdata.")[1]
    return sigs


def check_signatures(work, release):
    """Adding meta-rota (without the distro feature) changes no signature."""
    # One build directory for both (TOPDIR is part of some signatures).
    a = signatures(Build(work, release, "sig", []), SIGNATURE_SAMPLE)
    b = signatures(Build(work, release, "sig", [LAYER]), SIGNATURE_SAMPLE)
    if not a:
        fail(f"{release}: no signatures written")
    changed = sorted(k for k in a if a.get(k) != b.get(k))
    if changed:
        fail(f"{release}: adding meta-rota changed signatures: {changed[:10]}")
    log(f"{release}: adding meta-rota changes none of {len(a)} task signatures of {', '.join(SIGNATURE_SAMPLE)}")


def check_rota_recipes(b, rust):
    """rota, rota-native and nativesdk-rota resolve their dependencies where
    oe-core's Rust is new enough, and are skipped with the reason where not."""
    r = b.run("bitbake", "-g", "core-bundle-minimal", "rota", "nativesdk-rota", check=False)
    if b.release == "scarthgap":
        reason = f"rota needs Rust 1.90 or newer, this build has {rust}"
        if r.returncode == 0 or reason not in r.stdout + r.stderr:
            fail(f"{b.release}: rota recipes not skipped with the reason:\n{r.stdout[-2000:]}")
        log(f"{b.release}: rota recipes skipped: {reason}")
        return
    if r.returncode != 0:
        fail(f"{b.release}: rota recipes do not resolve:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    built = (b.dir / "pn-buildlist").read_text().split()
    for pn in ("rota", "rota-native", "nativesdk-rota", "rust-native", "cargo-native"):
        if pn not in built:
            fail(f"{b.release}: {pn} missing from the dependency graph of the rota recipes")
    log(f"{b.release}: rota, rota-native, nativesdk-rota resolve with Rust {rust} ({len(built)} recipes)")


def stage_deployed(ins, deploy):
    """What the tests put into DEPLOY_DIR_IMAGE, as if other recipes had deployed it."""
    deploy.mkdir(parents=True, exist_ok=True)
    for f in (ins / "deploy").iterdir():
        shutil.copy(f, deploy / f.name)


def expected_path(release, recipe):
    return HERE / "expected" / release / f"{recipe}.raucm"


def check_bundles(work, release, ins, keys, tool, update, referee):
    extra = (f'ROTA_TEST_INPUTS = "{ins}"\nROTA_TEST_BUNDLE_TOOL = "{tool}"\n'
             f'RAUC_KEY_FILE = "{keys}/release.key"\nRAUC_CERT_FILE = "{keys}/release.pem"\n'
             f'RAUC_INTERMEDIATE_CERT_FILE = "{keys}/inter.pem"\n'
             f'RAUC_KEYRING_FILE = "{keys}/keyring.pem"\n'
             f'RAUC_RECIPIENTS_CERT_FILE = "{keys}/rsa-recipient.pem"\n'
             'HOSTTOOLS += "mksquashfs unsquashfs zstd"\n'
             'DISTRO_FEATURES:append = " rota"\n')
    b = Build(work, release, "bundles", [LAYER, TEST_LAYER], extra)
    check_clean_parse(b)
    info = b.getvars(RECIPES + CONFIGURE_ONLY,
                     ["DEPLOY_DIR_IMAGE", "BUNDLE_DIR", "ROTA_TEST_WIRED_DEPENDS", "ROTA_TEST_WIRED_NATIVE",
                      "RUSTVERSION"])
    deploy = Path(info[RECIPES[0]]["DEPLOY_DIR_IMAGE"])
    stage_deployed(ins, deploy)
    check_rota_recipes(b, info[RECIPES[0]]["RUSTVERSION"].rstrip("%"))
    b.run("bitbake", "-c", "cleanall", *RECIPES, *CONFIGURE_ONLY)
    b.run("bitbake", "-c", "deploy", *RECIPES)
    if CONFIGURE_ONLY:
        b.run("bitbake", "-c", "configure", *CONFIGURE_ONLY)
    manifests = {}
    for recipe in RECIPES + CONFIGURE_ONLY:
        bundle_dir = Path(info[recipe]["BUNDLE_DIR"])
        text = (bundle_dir / "manifest.raucm").read_text()
        manifests[recipe] = text
        if recipe in DEFAULT_BUILD:
            # RAUC_BUNDLE_BUILD left at its default, the build's DATETIME.
            text = re.sub(r"^build=\d{14}$", "build=<DATETIME>", text, flags=re.M)
        exp = expected_path(release, recipe)
        if update:
            exp.parent.mkdir(parents=True, exist_ok=True)
            exp.write_text(text)
        elif not exp.is_file() or exp.read_text() != text:
            fail(f"{release}: {recipe}: manifest differs from {exp.relative_to(ROOT)}:\n{text}")
    log(f"{release}: manifests of {', '.join(RECIPES + CONFIGURE_ONLY)} equal the expected ones")

    # What the class wired up for the slots and extra files (before the
    # test include dropped it).
    # (the fetcher's own, for the .zst input, aside)
    wired = [w for w in info["bundle-every-variable"]["ROTA_TEST_WIRED_DEPENDS"].split()
             if not w.endswith("-native:do_populate_sysroot")]
    want = ["core-image-minimal:do_image_complete", "linux-yocto:do_deploy", "barebox:do_deploy",
            "linux-yocto:do_deploy", "app-image:do_deploy", "firmware-image:do_deploy",
            "container-test-image:do_image_complete", "notes-recipe:do_deploy", "other-recipe:do_compile"]
    if wired != want:
        fail(f"{release}: do_unpack[depends] wired as {wired}, want {want}")
    native = info["bundle-every-variable"]["ROTA_TEST_WIRED_NATIVE"].split()
    if native != ["rota-native", "squashfs-tools-native", "zstd-native"]:
        fail(f"{release}: DEPENDS wired as {native}")
    log(f"{release}: dependencies wired as meta-rauc wires them")

    bundle_dir = Path(info["bundle-every-variable"]["BUNDLE_DIR"])
    for name, mode in (("hook.sh", 0o100), ("extra.txt", 0), ("docs/README", 0), ("extras/note.txt", 0),
                       ("deployed-notes.txt", 0), ("firmware.img.img", 0), ("appfs.img", 0),
                       (f"zImage-{MACHINE}.bin.img", 0), (f"{MACHINE}-variant1.dtb.img", 0), ("barebox.img", 0)):
        p = bundle_dir / name
        if not p.is_file() or (p.stat().st_mode & mode) != mode:
            fail(f"{release}: bundle/{name} missing or not executable as wanted")
    barebox = (bundle_dir / "barebox.img").read_bytes()
    if barebox != (ins / "deploy" / "barebox.img").read_bytes()[512:]:
        fail(f"{release}: [offset] -512 did not drop the first 512 bytes")
    firmware = subprocess.run(["zstd", "-d", "-c", str(ins / "firmware.img.zst")], capture_output=True, check=True)
    if (bundle_dir / "firmware.img.img").read_bytes() != firmware.stdout:
        fail(f"{release}: [unpack] zst did not decompress")

    keyring = f"--keyring={keys}/keyring.pem"
    names = {
        "bundle-every-variable": ["bundle-every-variable"],
        "bundle-common": ["bundle-common"],
        "bundle-tree": ["bundle-tree"],
        "bundle-encrypted": ["secret", "encrypted-secret"],
        "bundle-convert": ["bundle-convert"],
        "bundle-casync": ["bundle-casync", "casync-bundle-casync"],
    }
    rota = tool.parent / "rota"
    for recipe, bases in names.items():
        for base in bases:
            link = deploy / (f"{base}-latest.raucb" if base == "secret" else
                             f"encrypted-secret-{MACHINE}.raucb" if base == "encrypted-secret" else
                             f"{base}-{MACHINE}.raucb")
            if not link.is_symlink():
                fail(f"{release}: {link.name} is not a link")
            target = os.readlink(link)
            if not re.fullmatch(rf"{re.escape(base)}-{MACHINE}-\d{{14}}\.raucb", target):
                fail(f"{release}: {link.name} -> {target}, not <name>-<machine>-<datetime>.raucb")
            if (deploy / target).stat().st_mode & 0o777 != 0o644:
                fail(f"{release}: {target} is not mode 0644")
            args = [str(rota), "info", keyring, "--output-format=shell", str(link)]
            if base == "encrypted-secret":
                args.insert(3, f"--key={keys}/rsa-recipient.key")
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{release}: rota info {link.name}: {r.stderr}")
            fmt = re.search(r"^RAUC_MF_FORMAT='?(\w+)", r.stdout, re.M)
            log(f"{release}: {link.name} -> {target}: rota info ok (format {fmt.group(1) if fmt else '?'})")
            # Debian's rauc (1.8) is the referee for what it knows: not the
            # image 'type=' key (RAUC 1.10) that imagetype writes, nor the
            # converters of RAUC 1.15.
            if "\ntype=" in manifests[recipe] or "\nconvert=" in manifests[recipe]:
                log(f"{release}: {link.name}: Debian's rauc 1.8 skipped (its manifest has 'type=' or 'convert=')")
                continue
            rargs = ["rauc", "info", keyring, str(link)] + (
                [f"--key={keys}/rsa-recipient.key"] if base == "encrypted-secret" else [])
            r = subprocess.run(rargs, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{release}: Debian's rauc info {link.name}: {r.stderr}")
            log(f"{release}: {link.name}: Debian's rauc info accepts it")

    check_casync_variant(release, deploy, ins, keyring)
    if referee:
        check_referee(work, release, ins, keys, referee, manifests)


def check_casync_variant(release, deploy, ins, keyring):
    """The casync variant of bundle-casync: its store deployed and linked,
    a blob index of the ext4 image and a directory index of the tar that
    read back to the image and to the tree (casync-rs against Debian's
    casync extract)."""
    link = deploy / f"casync-bundle-casync-{MACHINE}.castr"
    if not link.is_symlink() or not (deploy / os.readlink(link)).is_dir():
        fail(f"{release}: {link.name} is not a link to the deployed chunk store")
    bundle = deploy / f"casync-bundle-casync-{MACHINE}.raucb"
    listing = subprocess.run(["unsquashfs", "-l", str(bundle)], capture_output=True, text=True, check=True).stdout
    idx = {"blob": f"core-image-minimal-{MACHINE}.rootfs.ext4.caibx",
           "tree": f"container-test-image-{MACHINE}.rootfs.tar.gz.caidx"}
    for name in idx.values():
        if f"squashfs-root/{name}" not in listing:
            fail(f"{release}: {bundle.name} lacks {name}:\n{listing}")
    tmp = deploy.parent / "casync-check"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for kind, name in idx.items():
        data = subprocess.run(["unsquashfs", "-cat", str(bundle), name], capture_output=True, check=True).stdout
        (tmp / name).write_bytes(data)
        out = tmp / f"out-{kind}"
        subprocess.run(["casync", "extract", f"--store={link}", str(tmp / name), str(out)], check=True,
                       capture_output=True)
        if kind == "blob":
            if out.read_bytes() != (ins / f"core-image-minimal-{MACHINE}.rootfs.ext4").read_bytes():
                fail(f"{release}: casync extract of {name} is not the ext4 image")
        else:
            tree = tmp / "tree"
            tree.mkdir()
            subprocess.run(["tar", "-xzf", str(ins / f"container-test-image-{MACHINE}.rootfs.tar.gz"),
                            "-C", str(tree), "--numeric-owner"], check=True)
            diff = subprocess.run(["diff", "-r", "--no-dereference", str(tree), str(out)], capture_output=True, text=True)
            if diff.returncode != 0:
                fail(f"{release}: casync extract of {name} differs from the tar:\n{diff.stdout[-2000:]}")
    shutil.rmtree(tmp)
    log(f"{release}: casync variant deployed with its store; Debian's casync extracts both indexes")


def check_referee(work, release, ins, keys, gitdir, ours):
    """Builds the same recipes' manifests with meta-rauc's own class."""
    layer = work / release / "meta-rauc"
    shutil.rmtree(layer, ignore_errors=True)
    layer.mkdir(parents=True)
    subprocess.run(f"git -C '{gitdir}' archive {release} | tar -x -C '{layer}'", shell=True, check=True)
    # What meta-rauc's class of this release cannot parse: rota's tree type
    # everywhere; on scarthgap also type none, imagetype, unpack, convert.
    masked = ["bundle-tree", "bundle-casync"] + (["bundle-every-variable", "bundle-convert"] if release == "scarthgap" else [])
    extra = (f'ROTA_TEST_INPUTS = "{ins}"\nROTA_TEST_BUNDLE_TOOL = "/bin/false"\n'
             'SKIP_META_RAUC_FEATURE_CHECK = "1"\n' + "".join(f'BBMASK += "{m}"\n' for m in masked))
    b = Build(work, release, "referee", [layer, TEST_LAYER], extra)
    # meta-rauc's layer is named "rauc": the test layer depends on "rota".
    (b.dir / "conf" / "local.conf").open("a").write('LAYERDEPENDS_rota-tests = "core"\n')
    stage_deployed(ins, Path(b.getvar("bundle-common", "DEPLOY_DIR_IMAGE")))
    compared = []
    for recipe in RECIPES + CONFIGURE_ONLY:
        if recipe in masked:
            continue
        b.run("bitbake", "-c", "configure", recipe)
        text = (Path(b.getvar(recipe, "BUNDLE_DIR")) / "manifest.raucm").read_text()
        if text != ours[recipe]:
            fail(f"{release}: meta-rauc's manifest of {recipe} differs:\n{text}\n--- ours ---\n{ours[recipe]}")
        compared.append(recipe)
    log(f"{release}: meta-rauc's class writes the same manifests for {', '.join(compared) or 'none'}")


def check_oelint(work):
    venv = work / "oelint"
    exe = venv / "bin" / "oelint-adv"
    if not exe.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"oelint-adv=={OELINT_VERSION}"], check=True)
    files = sorted(str(p) for p in LAYER.rglob("*") if p.suffix in (".bb", ".bbappend", ".bbclass", ".inc"))
    for release in RELEASES:
        # The layer's own variables are declared as the layer's README
        # tells users to declare them; suggestions (info) are not findings.
        # rota-crates.inc is written by oe-core's update_crates task, whose
        # 'SRC_URI += " \' lines this rule flags.
        r = subprocess.run([str(exe), "--quiet", "--hide=info", f"--release={release}",
                            "--suppress", "oelint.vars.inconspaces",
                            f"--constantmods=+{LAYER / 'contrib' / 'oelint-constants.json'}", *files],
                           capture_output=True, text=True)
        found = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
        if r.returncode != 0 or found:
            fail(f"oelint-adv --release={release}:\n" + "\n".join(found))
    log(f"oelint-adv {OELINT_VERSION}: no error or warning in {len(files)} files (wrynose and scarthgap rules)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "target" / "yocto"))
    ap.add_argument("--release", action="append", choices=list(RELEASES))
    ap.add_argument("--update", action="store_true")
    ap.add_argument("--referee-meta-rauc")
    ap.add_argument("--skip-signatures", action="store_true")
    ap.add_argument("--signature-release", action="append", choices=list(RELEASES),
                    help="check signatures only on these releases (each takes two full parses)")
    ap.add_argument("--skip-oelint", action="store_true")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="where rota and rota-bundle are (default: the release build)")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tool = Path(args.bin_dir).resolve() / "rota-bundle"
    if not tool.is_file():
        fail(f"{tool} missing: cargo build (--release) first")
    keys = pki(work)
    ins = inputs(work)
    if not args.skip_oelint:
        check_oelint(work)
    for release in args.release or list(RELEASES):
        check_bundles(work, release, ins, keys, tool, args.update, args.referee_meta_rauc)
        if not args.skip_signatures and release in (args.signature_release or list(RELEASES)):
            check_signatures(work, release)
    log("all checks passed")


if __name__ == "__main__":
    main()
