//! The command line shared by `rota-bundle` and the multi-call `rota`
//! binary: program name from `argv[0]` (a `rauc` symlink behaves as `rauc`),
//! global options before or after the command, RAUC's texts (spec §9, §14).

pub mod commands;
pub mod logging;
pub mod options;
pub mod system;

use crate::hostconfig::HostConfig;
use options::{OptGroup, OptSpec, Parsed};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// Options every command accepts.
pub const GLOBAL_OPTIONS: &[OptSpec] = &[
    OptSpec::value("conf", "FILENAME", "use this system configuration file").short('c'),
    OptSpec::value("confopt", "SECTION:KEY=VALUE", "set a configuration value (repeatable)")
        .short('C')
        .optional_checked(crate::hostconfig::check_override),
    OptSpec::value("keyring", "PEMFILE", "trust anchors for signature checks").hidden(),
    OptSpec::value("intermediate", "PEMFILE", "intermediate certificate to embed").hidden(),
    OptSpec::value("cert", "PEMFILE", "signing certificate").hidden(),
    OptSpec::value("key", "PEMFILE", "signing or decryption key").hidden(),
    OptSpec::value("mount", "PATH", "mount prefix").hidden(),
    OptSpec::flag("debug", "print debug messages").short('d'),
    OptSpec::flag("version", "print the version and exit"),
    OptSpec::flag("help", "show help").short('h'),
];

/// A command failed: its message goes to stderr, exit code 1.
#[derive(Debug)]
pub struct CliError {
    /// Message for stderr (empty: already printed).
    pub message: String,
    /// Process exit code.
    pub code: i32,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError { message: e.to_string(), code: 1 }
    }
}

/// Fails with `message`.
pub fn fail<T>(message: impl Into<String>) -> Result<T, CliError> {
    Err(CliError { message: message.into(), code: 1 })
}

/// What a command runs with.
pub struct Context {
    /// Program name (basename of `argv[0]`).
    pub prog: String,
    /// All parsed options (global and command) and positionals after the command.
    pub args: Parsed,
    /// What the automatic HTTP headers report, when the device side knows
    /// more than the configuration file says (its system-info handler).
    pub header_facts: Option<crate::hostconfig::HeaderFacts>,
}

impl Context {
    /// The system configuration: `-c` (must load), else the first found
    /// search path, else defaults; `-C` overrides apply.
    pub fn host_config(&self) -> Result<HostConfig, CliError> {
        let explicit = self.args.value("conf").map(PathBuf::from);
        Ok(HostConfig::load(explicit.as_deref(), self.args.values("confopt"))?)
    }

    /// A path-valued option.
    pub fn path(&self, long: &str) -> Option<PathBuf> {
        self.args.value(long).map(PathBuf::from)
    }

    /// All values of a repeatable path option.
    pub fn paths(&self, long: &str) -> Vec<PathBuf> {
        self.args.values(long).iter().map(PathBuf::from).collect()
    }

    /// Positional `i`.
    pub fn arg(&self, i: usize) -> &str {
        &self.args.positionals[i]
    }
}

/// One sub-command.
#[derive(Clone, Copy)]
pub struct Command {
    /// Name on the command line.
    pub name: &'static str,
    /// Arguments in the usage line, e.g. `<BUNDLE>`.
    pub usage: &'static str,
    /// One-line description.
    pub summary: &'static str,
    /// Heading of the command's own options.
    pub group_title: &'static str,
    /// The command's own options.
    pub options: &'static [OptSpec],
    /// Accepted positional count (min, max).
    pub positionals: (usize, usize),
    /// Message when positionals are missing.
    pub missing_args: &'static str,
    /// The implementation.
    pub run: fn(&Context) -> Result<(), CliError>,
}

/// Program name from `argv[0]`.
pub fn program_name(argv0: Option<&OsString>) -> String {
    argv0
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "rota".to_string())
}

/// Version line: `rauc 1.16 (rota 0.1.0)` when called as `rauc`.
pub fn version_line(prog: &str) -> String {
    let own = env!("CARGO_PKG_VERSION");
    if prog == "rauc" {
        format!("rauc {} (rota {own})", crate::manifest::RAUC_COMPAT_VERSION)
    } else {
        format!("{prog} {own} (RAUC {} compatible)", crate::manifest::RAUC_COMPAT_VERSION)
    }
}

/// `User-Agent` of HTTP requests: RAUC's product token first when called as
/// `rauc` (servers that tell RAUC clients apart by it keep working).
pub fn user_agent(prog: &str) -> String {
    let own = concat!("rota/", env!("CARGO_PKG_VERSION"));
    if prog == "rauc" { format!("rauc/{} {own}", crate::manifest::RAUC_COMPAT_VERSION) } else { own.to_string() }
}

fn top_help(prog: &str, commands: &[Command]) -> String {
    let mut list = format!("Command-specific help:\n  {prog} <COMMAND> --help\n\nList of {prog} commands:\n");
    let width = commands.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in commands {
        list.push_str(&format!("  {:width$}  {}\n", c.name, c.summary));
    }
    list.push('\n');
    options::help(
        &format!("{prog} [OPTION…] <COMMAND>"),
        None,
        &[OptGroup { title: "Options:", options: GLOBAL_OPTIONS }],
        Some(&list),
    )
}

fn command_help(prog: &str, c: &Command) -> String {
    let usage = if c.usage.is_empty() {
        format!("{prog} [OPTION…] {}", c.name)
    } else {
        format!("{prog} [OPTION…] {} {}", c.name, c.usage)
    };
    let groups = [
        OptGroup { title: c.group_title, options: c.options },
        OptGroup { title: "Application Options:", options: GLOBAL_OPTIONS },
    ];
    options::help(&usage, Some(c.summary), &groups, None)
}

fn print_out(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Runs the command line `args` (including `argv[0]`) with `commands`;
/// returns the exit code.
pub fn main_with(args: Vec<OsString>, commands: &[Command]) -> i32 {
    let prog = program_name(args.first());
    let rest: Vec<String> = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let global: Vec<&OptSpec> = GLOBAL_OPTIONS.iter().collect();
    let Some(cmd_idx) = options::find_command(&rest, &global) else {
        return match options::parse(&rest, &global) {
            Ok(p) if p.has("version") => {
                print_out(&format!("{}\n", version_line(&prog)));
                0
            }
            Ok(p) if p.has("help") => {
                print_out(&top_help(&prog, commands));
                0
            }
            Ok(_) => {
                print_out(&top_help(&prog, commands));
                1
            }
            Err(e) => {
                if !matches!(e, options::ParseError::BadValue(_)) {
                    print_out(&top_help(&prog, commands));
                }
                eprintln!("{e}");
                1
            }
        };
    };
    // A refused global option before the command word is reported alone,
    // as RAUC's first pass over the command line reports it.
    if let Err(e @ options::ParseError::BadValue(_)) = options::parse(&rest[..cmd_idx], &global) {
        eprintln!("{e}");
        return 1;
    }
    let name = &rest[cmd_idx];
    let Some(cmd) = commands.iter().find(|c| c.name == name) else {
        print_out(&format!("Invalid command '{name}' given\n{}", top_help(&prog, commands)));
        return 1;
    };
    let mut without_cmd = rest.clone();
    without_cmd.remove(cmd_idx);
    let specs: Vec<&OptSpec> = cmd.options.iter().chain(GLOBAL_OPTIONS.iter()).collect();
    let parsed = match options::parse(&without_cmd, &specs) {
        Ok(p) => p,
        Err(e) => {
            // A global option's refused value ends RAUC's first pass over
            // the command line, before any help is shown.
            if !matches!(e, options::ParseError::BadValue(_)) {
                print_out(&command_help(&prog, cmd));
            }
            eprintln!("{e}");
            return 1;
        }
    };
    if parsed.has("help") {
        print_out(&command_help(&prog, cmd));
        return 0;
    }
    if parsed.has("version") {
        print_out(&format!("{}\n", version_line(&prog)));
        return 0;
    }
    logging::init(&prog, parsed.has("debug"));
    let n = parsed.positionals.len();
    if n < cmd.positionals.0 {
        eprintln!("{}", cmd.missing_args);
        return 1;
    }
    if n > cmd.positionals.1 {
        eprintln!("Excess arguments given to '{}': {}", cmd.name, parsed.positionals[cmd.positionals.1..].join(" "));
        return 1;
    }
    let ctx = Context { prog, args: parsed, header_facts: None };
    match (cmd.run)(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("{}", e.message);
            }
            e.code
        }
    }
}
