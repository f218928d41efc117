//! A small option parser that behaves and prints like GLib's `GOptionContext`,
//! because RAUC's usage and error texts are part of the contract (spec §14).

use std::collections::HashMap;

/// A check of an option's value while parsing (`None`: given without one).
pub type ValueCheck = fn(Option<&str>) -> Result<(), String>;

/// One option.
#[derive(Debug, Clone, Copy)]
pub struct OptSpec {
    /// Long name without dashes.
    pub long: &'static str,
    /// Short letter, if any.
    pub short: Option<char>,
    /// Placeholder shown after `=`; `None` for flags.
    pub arg: Option<&'static str>,
    /// One-line description.
    pub help: &'static str,
    /// Accepted but not listed in help.
    pub hidden: bool,
    /// The value may be left out (GLib's optional arguments): it is taken
    /// from `--name=value`, `-xvalue`, or the next argument unless that
    /// starts with `-`.
    pub optional: bool,
    /// Checks each occurrence while parsing (`None`: given without a
    /// value); its error ends parsing, as a GLib option callback's does.
    pub check: Option<ValueCheck>,
}

impl OptSpec {
    /// A boolean flag.
    pub const fn flag(long: &'static str, help: &'static str) -> OptSpec {
        OptSpec { long, short: None, arg: None, help, hidden: false, optional: false, check: None }
    }

    /// An option taking a value.
    pub const fn value(long: &'static str, arg: &'static str, help: &'static str) -> OptSpec {
        OptSpec { long, short: None, arg: Some(arg), help, hidden: false, optional: false, check: None }
    }

    /// Adds a short letter.
    pub const fn short(mut self, c: char) -> OptSpec {
        self.short = Some(c);
        self
    }

    /// Hides the option from help.
    pub const fn hidden(mut self) -> OptSpec {
        self.hidden = true;
        self
    }

    /// Makes the value optional; `check` sees every occurrence.
    pub const fn optional_checked(mut self, check: ValueCheck) -> OptSpec {
        self.optional = true;
        self.check = Some(check);
        self
    }

    /// Whether the argument at `next` (if any) is this option's value when
    /// it was not given inline.
    fn takes_next(&self, next: Option<&String>) -> bool {
        self.arg.is_some() && !(self.optional && next.is_none_or(|n| n.starts_with('-')))
    }
}

/// A titled group of options in help output.
#[derive(Debug, Clone, Copy)]
pub struct OptGroup {
    /// Heading, e.g. `Info options:`.
    pub title: &'static str,
    /// The options.
    pub options: &'static [OptSpec],
}

/// Parsed command line.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    values: HashMap<&'static str, Vec<String>>,
    /// Non-option arguments in order.
    pub positionals: Vec<String>,
}

impl Parsed {
    /// Records one occurrence of `spec` (an optional value left out is
    /// kept as an empty string) after its check.
    fn add(&mut self, spec: &OptSpec, value: Option<String>) -> Result<(), ParseError> {
        if let Some(check) = spec.check {
            check(value.as_deref()).map_err(ParseError::BadValue)?;
        }
        self.values.entry(spec.long).or_default().push(value.unwrap_or_default());
        Ok(())
    }

    /// Whether a flag (or any value of an option) was given.
    pub fn has(&self, long: &str) -> bool {
        self.values.contains_key(long)
    }

    /// The last value of an option.
    pub fn value(&self, long: &str) -> Option<&str> {
        self.values.get(long).and_then(|v| v.last()).map(String::as_str)
    }

    /// All values of a repeatable option.
    pub fn values(&self, long: &str) -> &[String] {
        self.values.get(long).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Why parsing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `Unknown option --x`.
    Unknown(String),
    /// `Missing argument for --x`.
    MissingValue(String),
    /// An option's own check refused its value (the message as it is).
    BadValue(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Unknown(o) => write!(f, "Unknown option {o}"),
            ParseError::MissingValue(o) => write!(f, "Missing argument for {o}"),
            ParseError::BadValue(m) => f.write_str(m),
        }
    }
}

fn find<'a>(specs: &[&'a OptSpec], long: Option<&str>, short: Option<char>) -> Option<&'a OptSpec> {
    specs.iter().copied().find(|s| match (long, short) {
        (Some(l), _) => s.long == l,
        (None, Some(c)) => s.short == Some(c),
        _ => false,
    })
}

/// Parses `args` (without the program name) against `specs`. Options may
/// appear anywhere; `--` ends option parsing.
pub fn parse(args: &[String], specs: &[&OptSpec]) -> Result<Parsed, ParseError> {
    let mut p = Parsed::default();
    let mut i = 0;
    let mut only_positional = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_positional || a == "-" || !a.starts_with('-') {
            p.positionals.push(a.clone());
            continue;
        }
        if a == "--" {
            only_positional = true;
            continue;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let spec = find(specs, Some(name), None).ok_or_else(|| ParseError::Unknown(a.clone()))?;
            let value = match (spec.arg, inline) {
                (None, None) => Some(String::new()),
                (None, Some(_)) => return Err(ParseError::Unknown(a.clone())),
                (Some(_), Some(v)) => Some(v),
                (Some(_), None) if spec.takes_next(args.get(i)) => {
                    let v = args.get(i).cloned().ok_or_else(|| ParseError::MissingValue(format!("--{name}")))?;
                    i += 1;
                    Some(v)
                }
                (Some(_), None) => None,
            };
            p.add(spec, value)?;
            continue;
        }
        // Short options, possibly bundled (`-dc file`, `-cfile`).
        let chars: Vec<char> = a[1..].chars().collect();
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            let spec = find(specs, None, Some(c)).ok_or_else(|| ParseError::Unknown(format!("-{c}")))?;
            k += 1;
            let value = if spec.arg.is_some() {
                if k < chars.len() {
                    let v: String = chars[k..].iter().collect();
                    k = chars.len();
                    Some(v)
                } else if spec.takes_next(args.get(i)) {
                    let v = args.get(i).cloned().ok_or_else(|| ParseError::MissingValue(format!("-{c}")))?;
                    i += 1;
                    Some(v)
                } else {
                    None
                }
            } else {
                Some(String::new())
            };
            p.add(spec, value)?;
        }
    }
    Ok(p)
}

/// Finds the command word: the first argument that is not an option or an
/// option's value, knowing only the global options (`global`).
pub fn find_command(args: &[String], global: &[&OptSpec]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            return (i + 1 < args.len()).then_some(i + 1);
        }
        if !a.starts_with('-') || a == "-" {
            return Some(i);
        }
        let next = args.get(i + 1);
        let takes_value = if let Some(body) = a.strip_prefix("--") {
            !body.contains('=') && find(global, Some(body), None).is_some_and(|s| s.takes_next(next))
        } else {
            let chars: Vec<char> = a[1..].chars().collect();
            chars.last().is_some_and(|&c| find(global, None, Some(c)).is_some_and(|s| s.takes_next(next)))
                && chars
                    .iter()
                    .take(chars.len() - 1)
                    .all(|&c| find(global, None, Some(c)).is_some_and(|s| s.arg.is_none()))
        };
        i += if takes_value { 2 } else { 1 };
    }
    None
}

fn entry_label(s: &OptSpec) -> String {
    let mut l = match s.short {
        Some(c) => format!("-{c}, --{}", s.long),
        None => format!("--{}", s.long),
    };
    if let Some(a) = s.arg {
        l.push('=');
        l.push_str(a);
    }
    l
}

/// Renders help in GLib's layout: usage line, summary, then option groups
/// whose descriptions share one column.
pub fn help(usage: &str, summary: Option<&str>, groups: &[OptGroup], trailer: Option<&str>) -> String {
    let width = groups
        .iter()
        .flat_map(|g| g.options.iter())
        .filter(|s| !s.hidden)
        .map(|s| entry_label(s).chars().count())
        .max()
        .unwrap_or(0)
        .max(10);
    let mut out = format!("Usage:\n  {usage}\n\n");
    if let Some(s) = summary {
        out.push_str(s);
        out.push_str("\n\n");
    }
    for g in groups {
        let visible: Vec<&OptSpec> = g.options.iter().filter(|s| !s.hidden).collect();
        if visible.is_empty() {
            continue;
        }
        out.push_str(g.title);
        out.push('\n');
        for s in visible {
            let label = entry_label(s);
            let pad = width + 4 - label.chars().count();
            out.push_str(format!("  {label}{:pad$} {}\n", "", s.help).trim_end_matches(' '));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push('\n');
    }
    if let Some(t) = trailer {
        out.push_str(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: OptSpec = OptSpec::value("conf", "FILENAME", "config file").short('c');
    const B: OptSpec = OptSpec::flag("debug", "more output").short('d');
    const K: OptSpec = OptSpec::value("keyring", "PEMFILE", "trust anchors");
    const N: OptSpec = OptSpec::flag("no-verify", "skip checks");

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_anywhere_and_all_value_styles() {
        let p = parse(
            &s(&["--keyring", "k.pem", "info", "-dcx.conf", "b.raucb", "--no-verify", "--keyring=k2.pem"]),
            &[&A, &B, &K, &N],
        )
        .unwrap();
        assert_eq!(p.positionals, vec!["info", "b.raucb"]);
        assert_eq!(p.value("conf"), Some("x.conf"));
        assert!(p.has("debug") && p.has("no-verify"));
        assert_eq!(p.values("keyring"), ["k.pem", "k2.pem"]);
        assert_eq!(parse(&s(&["--foobar"]), &[&A]).unwrap_err().to_string(), "Unknown option --foobar");
        assert_eq!(parse(&s(&["--conf"]), &[&A]).unwrap_err().to_string(), "Missing argument for --conf");
        assert_eq!(parse(&s(&["--", "--conf"]), &[&A]).unwrap().positionals, vec!["--conf"]);
    }

    #[test]
    fn command_is_found_past_global_values() {
        assert_eq!(find_command(&s(&["-c", "x", "--debug", "info", "b"]), &[&A, &B]), Some(3));
        assert_eq!(find_command(&s(&["--no-verify", "info"]), &[&A, &B]), Some(1));
        assert_eq!(find_command(&s(&["-dc", "x", "bundle"]), &[&A, &B]), Some(2));
        assert_eq!(find_command(&s(&["--debug"]), &[&A, &B]), None);
    }

    #[test]
    fn help_layout() {
        let h = help(
            "rauc [OPTION…] info <BUNDLE>",
            Some("Print bundle info"),
            &[
                OptGroup { title: "Info options:", options: &[N] },
                OptGroup { title: "Application Options:", options: &[A, B] },
            ],
            None,
        );
        assert!(
            h.starts_with(
                "Usage:\n  rauc [OPTION…] info <BUNDLE>\n\nPrint bundle info\n\nInfo options:\n  --no-verify "
            ),
            "{h}"
        );
        let lines: Vec<&str> = h.lines().filter(|l| l.starts_with("  -")).collect();
        let col = |l: &str, d: &str| l.find(d).unwrap();
        assert_eq!(col(lines[0], "skip"), col(lines[1], "config"));
    }
}
