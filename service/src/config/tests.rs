use super::*;
use std::path::Path;

const BASE: &str = "[system]\ncompatible=Test Config\nbootloader=grub\n\n[slot.rootfs.0]\ndevice=/dev/sda2\nbootname=A\n\n[slot.rootfs.1]\ndevice=/dev/sda3\nbootname=B\n";

fn err(text: &str) -> ConfigError {
    load_text(text, "t.conf", Path::new("/etc/rauc")).unwrap_err()
}

#[test]
fn a_full_configuration_is_read() {
    let c = load_text(
        &format!(
            "{BASE}\n[slot.appfs.0]\ndevice=app0\nparent=rootfs.0\ntype=ext4\nresize=true\nextra-mkfs-opts=-O ^has_journal\n\
             [slot.appfs.1]\ndevice=app1\nparent=rootfs.1\ntype=ext4\n\
             [keyring]\npath=ca.pem\ncheck-purpose=codesign\nallowed-signer-cns=a;b\n\
             [streaming]\nsend-headers=boot-id;uptime\n[casync]\ninstall-args=--seed-output=no\n\
             [handlers]\npre-install=pre.sh\n"
        ),
        "t.conf",
        Path::new("/etc/rauc"),
    )
    .unwrap();
    assert_eq!(c.system.compatible, "Test Config");
    assert_eq!(c.system.bootloader, BootloaderKind::Grub);
    assert_eq!(c.system.status, StatusMode::PerSlot);
    assert_eq!(c.slots.len(), 4);
    let app = c.slot("appfs.0").unwrap();
    assert_eq!(app.parent.as_deref(), Some("rootfs.0"));
    assert_eq!(app.device, Path::new("/etc/rauc/app0"));
    assert_eq!(app.extra_mkfs_opts, ["-O", "^has_journal"]);
    assert_eq!(app.effective_bootname(&c.slots), Some("A"));
    assert_eq!(c.keyring.path.as_deref(), Some(Path::new("/etc/rauc/ca.pem")));
    assert_eq!(c.keyring.allowed_signer_cns, ["a", "b"]);
    assert_eq!(c.handlers.pre_install.as_deref(), Some(Path::new("/etc/rauc/pre.sh")));
}

#[test]
fn data_directory_selects_central_status() {
    let c = load_text(&format!("{BASE}[system]\ndata-directory=/data/rauc\n"), "t", Path::new("/")).unwrap();
    assert_eq!(c.system.status, StatusMode::Central("/data/rauc/central.raucs".into()));
    let e = err(&format!("{BASE}[system]\ndata-directory=/d\nstatusfile=per-slot\n"));
    assert_eq!(e.line, Some(14));
    assert!(e.message.contains("Key 'statusfile'"), "{e}");
}

#[test]
fn grandparents_collapse_and_loops_fail() {
    let c = load_text(
        &format!("{BASE}[slot.a.0]\ndevice=x\nparent=rootfs.0\n[slot.b.0]\ndevice=y\nparent=a.0\n"),
        "t",
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(c.slot("b.0").unwrap().parent.as_deref(), Some("rootfs.0"));
    let e = err(&format!("{BASE}[slot.a.0]\ndevice=x\nparent=b.0\n[slot.b.0]\ndevice=y\nparent=a.0\n"));
    assert!(e.message.contains("parent loop"), "{e}");
}

#[test]
fn errors_name_file_line_and_key() {
    let cases: &[(&str, usize, &str)] = &[
        ("[system]\ncompatible=x\nbootloader=grub\nfoo=1\n", 4, "Invalid key 'foo' in group '[system]'"),
        ("[system]\ncompatible=x\nbootloader=lilo\n", 3, "Unsupported bootloader 'lilo' selected in system config"),
        ("[system]\ncompatible=x\n", 1, "No bootloader selected in system config"),
        ("[system]\nbootloader=grub\n", 1, "System compatible string is not set"),
        ("[system]\ncompatible=x\nbootloader=uboot\ngrubenv=/g\n", 4, "Invalid key 'grubenv' in group '[system]'"),
        ("[system]\ncompatible=x\nbootloader=grub\n[foo]\n", 4, "Invalid group '[foo]'"),
        ("[system]\ncompatible=x\nbootloader=grub\n[slot.a]\ndevice=/d\n", 4, "Invalid slot name format: slot.a"),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[slot.a.0]\ndevice=/d\ntype=jffs3\n",
            6,
            "Unsupported slot type 'jffs3'",
        ),
        ("[system]\ncompatible=x\nbootloader=grub\nactivate-installed=yes\n", 4, "Key 'activate-installed'"),
        ("[system]\ncompatible=x\nbootloader=grub\nboot-attempts=3\n", 4, "Key 'boot-attempts'"),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[streaming]\nsend-headers=shoe\n",
            5,
            "Automatic HTTP header 'shoe' not supported",
        ),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[streaming]\nretries=1000\n",
            5,
            "Key 'retries' in group '[streaming]' must be a number from 0 to 100",
        ),
        ("[system]\ncompatible=x\nbootloader=grub\n[slot.a.0]\ndevice=/d\nparent=b.0\n", 6, "Parent slot 'b.0'"),
        ("[system]\ncompatible=x\nbootloader=grub\n[slot.a.0]\ntype=raw\n", 4, "Key 'device'"),
        ("[system]\ncompatible=x\nbootloader=custom\n", 1, "Key 'bootloader-custom-backend'"),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[slot.a.0]\ndevice=/d\ntype=boot-mbr-switch\n",
            4,
            "Key 'region-start'",
        ),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[slot.a.0]\ndevice=/d\nregion-start=1M\n",
            6,
            "Invalid key 'region-start'",
        ),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[keyring]\ncheck-purpose=shoe\n",
            5,
            "failed to configure X509 purpose 'shoe'",
        ),
        ("[system]\ncompatible=x\nbootloader=grub\n[polling]\nurl=ftp://x\n", 5, "Key 'url'"),
        ("[system]\ncompatible=x\nbootloader=grub\n[log.a]\nfilename=rel.log\n", 5, "requires a data-directory"),
        ("[system]\ncompatible=x\nbootloader=grub\nvariant-name=a\nvariant-dtb=true\n", 5, "Key 'variant-dtb'"),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[slot.a.0]\ndevice=/d\nbootname=A\n[slot.a.1]\ndevice=/e\nbootname=A\n",
            9,
            "Bootname 'A'",
        ),
        ("[system]\ncompatible=x\nbootloader=grub\nmin-bundle-version=x.y\n", 4, "Key 'min-bundle-version'"),
        ("[system]\ncompatible=\nbootloader=grub\n", 2, "Missing value for key 'compatible'"),
        ("[system]\ncompatible=x\nbootloader=grub\n[tree]\npersist=/etc;etc/x\n", 5, "'etc/x' is not an absolute path"),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[tree]\npersist=/var/../etc\n",
            5,
            "'/var/../etc' is not an absolute",
        ),
        ("[system]\ncompatible=x\nbootloader=grub\n[tree]\ncache-size=8M\n", 5, "requires a data-directory"),
        ("[system]\ncompatible=x\nbootloader=grub\n[tree]\ncache-size=lots\n", 5, "invalid size 'lots'"),
        (
            "[system]\ncompatible=x\nbootloader=grub\n[tree]\npersists=/etc\n",
            5,
            "Invalid key 'persists' in group '[tree]'",
        ),
        ("[system]\ncompatible=x\nbootloader=grub\n;x\n", 4, "not a key-value pair"),
    ];
    for (text, line, needle) in cases {
        let e = err(text);
        assert_eq!(e.line, Some(*line), "{text:?}: {e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("Invalid system config: t.conf:{line}: ")), "{shown}");
        assert!(shown.contains(needle), "{text:?}: {shown}");
    }
}

#[test]
fn drop_ins_apply_in_order_then_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("system.conf");
    std::fs::write(&main, BASE).unwrap();
    let d = dir.path().join("system.conf.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("20-b.conf"), "[system]\ncompatible=from-b\n").unwrap();
    std::fs::write(d.join("10-a.conf"), "[system]\ncompatible=from-a\nmountprefix=/run/m\n").unwrap();
    std::fs::write(d.join("ignored.txt"), "garbage").unwrap();
    let c = load(Some(&main), &[]).unwrap();
    assert_eq!(c.system.compatible, "from-b");
    assert_eq!(c.system.mount_prefix, Path::new("/run/m"));
    assert_eq!(c.sources.len(), 3);
    let c = load(Some(&main), &["system:compatible=from-C".into()]).unwrap();
    assert_eq!(c.system.compatible, "from-C");

    std::fs::write(d.join("30-c.conf"), "[system]\n\nbogus=1\n").unwrap();
    let e = load(Some(&main), &[]).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("Invalid system config: {}:3: Invalid key 'bogus' in group '[system]'", d.join("30-c.conf").display())
    );
    let e = load(Some(&main), &["system:other=1".into()]).unwrap_err().to_string();
    assert!(e.contains("30-c.conf:3"), "{e}");
    std::fs::remove_file(d.join("30-c.conf")).unwrap();
    let e = load(Some(&main), &["system:other=1".into()]).unwrap_err().to_string();
    assert_eq!(e, "Invalid system config: -C option 1:1: Invalid key 'other' in group '[system]'");
}

#[test]
fn a_missing_explicit_file_fails() {
    let e = load(Some(Path::new("/nonexistent/system.conf")), &[]).unwrap_err().to_string();
    assert!(e.starts_with("Invalid system config: /nonexistent/system.conf: Failed to read: No such file"), "{e}");
}

#[test]
fn main_and_secondary_ecus_are_read() {
    let c = load_text(
        &format!(
            "{BASE}[system]\ndata-directory=/data\n[ecu]\nid=main\nrole=main\ncert=ecu.pem\nkey=ecu.key\nhealth-check=/usr/lib/health\n\
             proxy-listen=10.0.0.1:8480\nproxy-cache-size=256M\nhealth-timeout-sec=60\n\
             [secondary.display]\naddress=10.0.0.2:50151\ncert=display.pem\n\
             [secondary.pay]\naddress=pay.local:50151\ncert=/etc/pki/pay.pem\n"
        ),
        "t.conf",
        Path::new("/etc/rauc"),
    )
    .unwrap();
    let ecu = c.ecu.unwrap();
    assert_eq!((ecu.id.as_str(), ecu.cert.as_path()), ("main", Path::new("/etc/rauc/ecu.pem")));
    assert_eq!(ecu.health_check.as_deref(), Some(Path::new("/usr/lib/health")));
    let EcuRole::Main { secondaries, proxy_listen, proxy_cache_size, prepare_timeout_sec, health_timeout_sec } =
        ecu.role
    else {
        panic!("main")
    };
    assert_eq!(proxy_listen, Some("10.0.0.1:8480".parse().unwrap()));
    assert_eq!((proxy_cache_size, prepare_timeout_sec, health_timeout_sec), (256 << 20, 3600, 60));
    assert_eq!(
        secondaries,
        [
            SecondaryConfig {
                id: "display".into(),
                address: "10.0.0.2:50151".into(),
                cert: "/etc/rauc/display.pem".into()
            },
            SecondaryConfig { id: "pay".into(), address: "pay.local:50151".into(), cert: "/etc/pki/pay.pem".into() },
        ]
    );

    let c = load_text(
        &format!(
            "{BASE}[system]\ndata-directory=/data\n[ecu]\nid=display\nrole=secondary\ncert=e.pem\nkey=e.key\n\
             listen=0.0.0.0:50151\nmain-cert=m.pem\nreboot-command=systemctl reboot --force\n"
        ),
        "t.conf",
        Path::new("/etc/rauc"),
    )
    .unwrap();
    let ecu = c.ecu.unwrap();
    assert_eq!(
        ecu.role,
        EcuRole::Secondary { listen: "0.0.0.0:50151".parse().unwrap(), main_cert: "/etc/rauc/m.pem".into() }
    );
    assert_eq!(ecu.reboot_command, ["systemctl", "reboot", "--force"]);
    assert_eq!(ecu.state_directory, Path::new("/data/ecu"));
    assert!(load_text(BASE, "t", Path::new("/")).unwrap().ecu.is_none());
}

#[test]
fn ecu_configuration_errors_name_the_key() {
    let main = "[ecu]\nid=main\nrole=main\ncert=c\nkey=k\n";
    let sec = "[ecu]\nid=s\nrole=secondary\ncert=c\nkey=k\nlisten=0.0.0.0:1\nmain-cert=m\n";
    let cases = [
        ("[ecu]\nrole=main\ncert=c\nkey=k\n".to_string(), "Key 'id' in group '[ecu]' is required"),
        ("[ecu]\nid=a b\nrole=main\ncert=c\nkey=k\n".to_string(), "Invalid ECU id 'a b' in group '[ecu]'"),
        ("[ecu]\nid=m\nrole=boss\ncert=c\nkey=k\n".to_string(), "'boss' is neither main nor secondary"),
        ("[ecu]\nid=m\nrole=main\nkey=k\n".to_string(), "Key 'cert' in group '[ecu]' is required"),
        (format!("{main}listen=0.0.0.0:1\n"), "Invalid key 'listen' in group '[ecu]'"),
        (format!("{main}proxy-listen=host:1\n"), "'host:1' is not an IP address and port"),
        (format!("{main}[secondary.d]\naddress=10.0.0.2\ncert=d\n"), "'10.0.0.2' has no port"),
        (format!("{main}[secondary.d]\naddress=10.0.0.2:1\n"), "Key 'cert' in group '[secondary.d]' is required"),
        (format!("{main}[secondary.main]\naddress=a:1\ncert=d\n"), "Secondary 'main' has the main ECU's own id"),
        ("[secondary.d]\naddress=a:1\ncert=d\n".to_string(), "needs an '[ecu]' group with role=main"),
        (sec.replace("main-cert=m\n", ""), "Key 'main-cert' in group '[ecu]' is required for role=secondary"),
        (sec.replace("listen=0.0.0.0:1\n", ""), "Key 'listen' in group '[ecu]' is required for role=secondary"),
        (format!("{sec}[secondary.d]\naddress=a:1\ncert=d\n"), "is for role=main; this ECU is a secondary"),
    ];
    let no_data = err(&format!("{BASE}{main}")).to_string();
    assert!(no_data.contains("Group '[ecu]' requires a data-directory"), "{no_data}");
    for (text, want) in cases {
        let e = err(&format!("{BASE}[system]\ndata-directory=/d\n{text}")).to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
}
