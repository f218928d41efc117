//! `install <BUNDLE>` in direct mode: the install engine runs in this
//! process. Progress is a bar on a terminal (or with `--progress`), plain
//! `%3d%% <message>` lines otherwise.

use crate::install::engine::{self, InstallArgs};
use crate::install::progress::ProgressSink;
use rota_bundle::cli::{CliError, Context};
use std::io::{IsTerminal, Write};

/// The bundle location for `arg`: a URL, or an existing local file (its
/// absolute path; a `file:` URI converted), as RAUC resolves it.
pub(super) fn location(arg: &str) -> Result<String, CliError> {
    Ok(rota_bundle::bundle::resolve_location(arg)?)
}

fn bar(percentage: i32, message: &str) {
    let width = 30usize;
    let filled = (percentage.clamp(0, 100) as usize * width) / 100;
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K[{}{}] {percentage:3}% {message}", "#".repeat(filled), ".".repeat(width - filled));
    let _ = err.flush();
}

/// Shows progress (bar or lines) and handler messages on the terminal.
pub(super) struct Terminal {
    bar: bool,
    /// The last progress update, redrawn below a handler message.
    last: Option<(i32, String)>,
}

impl Terminal {
    /// A bar when `bar`, else `%3d%% <message>` lines.
    pub(super) fn new(bar: bool) -> Terminal {
        Terminal { bar, last: None }
    }

    /// Ends the bar's line.
    pub(super) fn finish(&self) {
        if self.bar {
            eprintln!();
        }
    }
}

impl ProgressSink for Terminal {
    fn progress(&mut self, percentage: i32, message: &str, _depth: i32) {
        if self.bar {
            bar(percentage, message);
            self.last = Some((percentage, message.to_string()));
        } else {
            println!("{percentage:3}% {message}");
        }
    }

    fn message(&mut self, text: &str) {
        if self.bar {
            eprint!("\r\x1b[K");
            println!("{text}");
            if let Some((p, m)) = &self.last {
                bar(*p, m);
            }
        } else {
            println!("{text}");
        }
    }
}

/// Options that only direct mode takes.
const DIRECT_ONLY: [&str; 3] = ["keyring", "handler-args", "override-boot-slot"];

/// The bundle-access options (`--tls-*`, `-H`) as D-Bus arguments.
pub(super) fn access_args(ctx: &Context) -> std::collections::HashMap<&str, zbus::Variant<'_>> {
    let mut args = std::collections::HashMap::new();
    for key in ["tls-cert", "tls-key", "tls-ca"] {
        if let Some(v) = ctx.args.value(key) {
            args.insert(key, v.into());
        }
    }
    if ctx.args.has("tls-no-verify") {
        args.insert("tls-no-verify", true.into());
    }
    let headers: Vec<&str> = ctx.args.values("http-header").iter().map(String::as_str).collect();
    if !headers.is_empty() {
        args.insert("http-headers", headers.into());
    }
    args
}

/// `install` through the running service.
fn through_service(ctx: &Context, client: &super::client::Client, loc: &str) -> Result<(), CliError> {
    if let Some(o) = DIRECT_ONLY.iter().find(|o| ctx.args.value(o).is_some()) {
        return Err(CliError { message: format!("--{o} not supported when using the D-Bus service"), code: 1 });
    }
    let mut args = access_args(ctx);
    args.insert("ignore-compatible", ctx.args.has("ignore-compatible").into());
    args.insert("ignore-version-limit", ctx.args.has("ignore-version-limit").into());
    for key in ["transaction-id", "require-manifest-hash"] {
        if let Some(v) = ctx.args.value(key) {
            args.insert(key, v.into());
        }
    }
    client.install(loc, args, ctx.args.has("progress") || std::io::stderr().is_terminal())
}

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    let loc = location(ctx.arg(0))?;
    if let Some(client) = super::client::Client::connect() {
        return through_service(ctx, &client, &loc);
    }
    let mut system = super::setup(ctx)?;
    let args = InstallArgs {
        location: loc.clone(),
        open: super::open_options(ctx, &system.config, &system.header_facts(None))?,
        ignore_compatible: ctx.args.has("ignore-compatible"),
        ignore_version_limit: ctx.args.has("ignore-version-limit"),
        transaction_id: ctx.args.value("transaction-id").map(str::to_string),
        require_manifest_hash: ctx.args.value("require-manifest-hash").map(str::to_string),
        handler_args: ctx.args.value("handler-args").map(str::to_string),
        no_activate: false,
        control: Default::default(),
    };
    let mut sink = Terminal::new(ctx.args.has("progress") || std::io::stderr().is_terminal());
    let result = engine::install(&mut system, &args, &mut sink);
    sink.finish();
    match result {
        Ok(_) => {
            println!("Installing `{loc}` succeeded");
            Ok(())
        }
        Err(e) => {
            eprintln!("LastError: {e}");
            Err(CliError { message: format!("Installing `{loc}` failed"), code: 1 })
        }
    }
}
