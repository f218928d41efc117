//! A real PKCS#11 token for tests: SoftHSM 2 (Debian `softhsm2`) with its
//! token files in a folder of the test's own, filled with `pkcs11-tool`
//! (Debian `opensc`) from keys and certificates of the test PKI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM's PKCS#11 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The user PIN of every test token.
pub const PIN: &str = "1234";

/// One initialised token named `rota`, private to a test.
pub struct Token {
    dir: PathBuf,
}

impl Token {
    /// A new, empty token whose files live under `dir` (emptied first).
    pub fn new(dir: &Path) -> Token {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("tokens")).unwrap();
        fs::write(
            dir.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        let t = Token { dir: dir.to_path_buf() };
        t.run("softhsm2-util", &["--init-token", "--free", "--label", "rota", "--pin", PIN, "--so-pin", "0000"]);
        t
    }

    /// The environment that points OpenSSL's pkcs11 engine (and SoftHSM) at
    /// this token and logs in with [`PIN`].
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.env_without_pin();
        env.push(("RAUC_PKCS11_PIN".into(), PIN.into()));
        env
    }

    /// [`Token::env`] without the PIN.
    pub fn env_without_pin(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.dir.join("softhsm2.conf").display().to_string()),
            ("RAUC_PKCS11_MODULE".into(), MODULE.into()),
        ]
    }

    /// Stores the private key of PEM file `key` (usable for signing,
    /// decryption and key agreement) and, if given, certificate `cert`
    /// under `label`.
    pub fn import(&self, label: &str, id: &str, key: &Path, cert: Option<&Path>) {
        let der = self.dir.join(format!("{label}.key.der"));
        convert(&["pkey", "-in"], key, &der);
        let (d, i, l) = (der.to_str().unwrap(), id, label);
        self.login(&[
            "--write-object",
            d,
            "--type",
            "privkey",
            "--id",
            i,
            "--label",
            l,
            "--usage-sign",
            "--usage-decrypt",
            "--usage-derive",
        ]);
        fs::remove_file(&der).unwrap();
        if let Some(cert) = cert {
            let der = self.dir.join(format!("{label}.cert.der"));
            convert(&["x509", "-in"], cert, &der);
            self.login(&["--write-object", der.to_str().unwrap(), "--type", "cert", "--id", i, "--label", l]);
        }
    }

    /// The URI of object `label` of type `kind` (`private`, `cert`).
    pub fn uri(&self, label: &str, kind: &str) -> String {
        format!("pkcs11:token=rota;object={label};type={kind}")
    }

    fn login(&self, args: &[&str]) {
        let mut all = vec!["--module", MODULE, "--login", "--pin", PIN];
        all.extend_from_slice(args);
        self.run("pkcs11-tool", &all);
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = Command::new(tool)
            .args(args)
            .env("SOFTHSM2_CONF", self.dir.join("softhsm2.conf"))
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e} (Debian packages softhsm2 and opensc)"));
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `openssl <args> <pem> -outform DER -out <der>`.
fn convert(args: &[&str], pem: &Path, der: &Path) {
    let out = Command::new("openssl").args(args).arg(pem).args(["-outform", "DER", "-out"]).arg(der).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
