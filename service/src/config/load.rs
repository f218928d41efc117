//! Finding and merging the configuration files, and naming the file and
//! line of every error.

use super::SystemConfig;
use rota_bundle::keyfile::{KeyFile, KeyFileError};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where `system.conf` is looked for when `-c` is not given; the first existing wins.
pub const SEARCH_PATHS: [&str; 3] = ["/etc/rauc/system.conf", "/run/rauc/system.conf", "/usr/lib/rauc/system.conf"];

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `-C` option) the problem is in.
    pub origin: Option<String>,
    /// 1-based line in that file.
    pub line: Option<usize>,
    /// What is wrong (the spec's wording where it has one).
    pub message: String,
}

impl ConfigError {
    /// An error not tied to a file.
    pub fn plain(message: impl Into<String>) -> Self {
        ConfigError { origin: None, line: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.origin, self.line) {
            (Some(o), Some(l)) if l > 0 => write!(f, "Invalid system config: {o}:{l}: {}", self.message),
            (Some(o), _) => write!(f, "Invalid system config: {o}: {}", self.message),
            // Not about a file: `-C` syntax errors and the like, worded as RAUC does.
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Names of the merged inputs, indexed by the key file's `origin` tags.
pub(super) struct Origins {
    names: Vec<String>,
}

impl Origins {
    /// Turns a key-file error into a config error naming its input.
    pub(super) fn error(&self, e: KeyFileError) -> ConfigError {
        ConfigError { origin: self.names.get(e.origin as usize).cloned(), line: e.line, message: e.message }
    }

    /// The name of the main input.
    pub(super) fn main(&self) -> Option<String> {
        self.names.first().cloned()
    }
}

fn read_keyfile(path: &Path) -> Result<KeyFile, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: Some(name.clone()),
        line: None,
        message: format!("Failed to read: {}", e),
    })?;
    KeyFile::parse(&text).map_err(|e| ConfigError { origin: Some(name), line: e.line, message: e.message })
}

/// The drop-in fragments for `main`: `<dir of main>/system.conf.d/*.conf`, sorted by name.
pub fn drop_ins(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = main.parent().unwrap_or(Path::new(".")).join("system.conf.d");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError {
                origin: Some(dir.display().to_string()),
                line: None,
                message: format!("Failed to read drop-in directory: {}", e),
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Applies one `-C SECTION:KEY=VALUE` to `kf`, tagging it with `origin`.
fn apply_override(kf: &mut KeyFile, spec: &str, origin: u32) -> Result<(), ConfigError> {
    let mut single = KeyFile::default();
    rota_bundle::hostconfig::apply_override(&mut single, spec).map_err(|e| ConfigError::plain(e.to_string()))?;
    for g in &mut single.groups {
        g.line = 1;
        for e in &mut g.entries {
            e.line = 1;
        }
    }
    kf.merge(single, origin);
    Ok(())
}

/// Loads the configuration: `explicit` (must exist) or the first of
/// [`SEARCH_PATHS`], its drop-ins, then `overrides`. Without any file the
/// overrides alone must make a valid configuration.
pub fn load(explicit: Option<&Path>, overrides: &[String]) -> Result<SystemConfig, ConfigError> {
    let main = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => SEARCH_PATHS.iter().map(PathBuf::from).find(|p| p.exists()),
    };
    let mut names = Vec::new();
    let mut sources = Vec::new();
    let mut kf = KeyFile::default();
    if let Some(main) = &main {
        kf = read_keyfile(main)?;
        names.push(main.display().to_string());
        sources.push(main.clone());
        for d in drop_ins(main)? {
            let frag = read_keyfile(&d)?;
            kf.merge(frag, names.len() as u32);
            names.push(d.display().to_string());
            sources.push(d);
        }
    } else if overrides.is_empty() {
        return Err(ConfigError::plain(format!(
            "No system config found (looked for {}); give one with --conf",
            SEARCH_PATHS.join(", ")
        )));
    }
    for (i, o) in overrides.iter().enumerate() {
        let origin = names.len() as u32;
        names.push(format!("-C option {}", i + 1));
        apply_override(&mut kf, o, origin)?;
    }
    let origins = Origins { names };
    let base = main.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        std::path::absolute(&base).unwrap_or(base)
    };
    let mut config = super::sections::interpret(&kf, &origins, &base)?;
    config.path = main;
    config.sources = sources;
    Ok(config)
}

/// Interprets configuration text as if read from `name` (no drop-ins, no
/// overrides); relative paths resolve against `base`.
pub fn load_text(text: &str, name: &str, base: &Path) -> Result<SystemConfig, ConfigError> {
    let kf = KeyFile::parse(text).map_err(|e| ConfigError {
        origin: Some(name.to_string()),
        line: e.line,
        message: e.message,
    })?;
    let origins = Origins { names: vec![name.to_string()] };
    super::sections::interpret(&kf, &origins, base)
}
