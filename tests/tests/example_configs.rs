//! Every example in the top-level `system.conf.d/` loads, on its own and (for
//! the drop-in) layered over a product configuration; rota-ocpp's example
//! with rota-ocpp's parser.

use testkit::device::Device;
use testkit::{run, target_dir, workspace};

fn examples() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(workspace().join("system.conf.d"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    v.sort();
    v
}

#[test]
fn examples_load() {
    let all = examples();
    assert!(all.len() >= 6, "{all:?}");
    for conf in all.iter().filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("drop-in")) {
        let text = std::fs::read_to_string(conf).unwrap();
        let d = Device::new(target_dir().join("test-devices/example-conf"), &text);
        // Booted slot given explicitly: the example devices do not exist here.
        // The example system-info handler is not installed here; `true` stands in.
        let r = run(d
            .rota()
            .args([
                "status",
                "--override-boot-slot=_external_",
                "--output-format=json",
                "-C",
                "handlers:system-info=/bin/true",
            ])
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", testkit::device::fakes_dir().display())));
        // Bootloader queries may fail (no such hardware); the config itself must load.
        assert!(!r.stderr.contains("Invalid system config"), "{}: {}", conf.display(), r.stderr);
        assert_eq!(r.code, 0, "{}: {}", conf.display(), r.stderr);
    }
}

#[test]
fn drop_in_layers_over_a_product_config() {
    let product = std::fs::read_to_string(workspace().join("system.conf.d/grub-x86.conf")).unwrap();
    let d = Device::new(target_dir().join("test-devices/example-drop-in"), &product);
    std::fs::create_dir_all(d.path("system.conf.d")).unwrap();
    std::fs::copy(workspace().join("system.conf.d/drop-in-streaming.conf"), d.path("system.conf.d/50-streaming.conf"))
        .unwrap();
    run(d.rota().args(["status", "--override-boot-slot=_external_", "--output-format=json"])).ok();
}

#[test]
fn the_rota_ocpp_example_loads() {
    let text = std::fs::read_to_string(workspace().join("system.conf.d/everest-charger-ocpp.ini")).unwrap();
    let c = rota_ocpp::config::Config::build(&text, &[]).unwrap();
    assert_eq!(c.link.protocol, rota_ocpp::Protocol::Ocpp201);
    assert!(c.link.client_cert.is_some() && c.link.ca_file.is_some());
    assert_eq!(c.max_download_size, 1 << 30);
}
