//! The GLib "key file" dialect that RAUC uses for manifests, `system.conf` and
//! status files (spec §0): groups, `key=value` lines, `#` comments, `\s`-style
//! escapes and `;`-separated lists.
//!
//! We parse it ourselves instead of through `rust-ini`: that crate accepts
//! `;` comment lines and `key:value` pairs that GLib rejects, and it keeps no
//! line numbers, which every configuration error message must name.

use std::fmt;

/// An error found while parsing or reading a key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError {
    /// 1-based line number the error refers to, if it refers to one.
    pub line: Option<usize>,
    /// Human-readable description (the spec's wording where it has one).
    pub message: String,
    /// Which input the line belongs to when several files were merged (see [`KeyFile::merge`]).
    pub origin: u32,
}

impl KeyFileError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        KeyFileError { line: Some(line), message: message.into(), origin: 0 }
    }

    /// An error about `entry`, pointing at its line and input.
    pub fn at_entry(entry: &Entry, message: impl Into<String>) -> Self {
        KeyFileError { line: Some(entry.line), message: message.into(), origin: entry.origin }
    }

    /// An error about a whole group, pointing at its header.
    pub fn at_group(group: &Group, message: impl Into<String>) -> Self {
        KeyFileError { line: Some(group.line), message: message.into(), origin: group.origin }
    }

    /// An error that does not point at a line.
    pub fn new(message: impl Into<String>) -> Self {
        KeyFileError { line: None, message: message.into(), origin: 0 }
    }
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyFileError {}

/// One `key=value` entry with the raw (still escaped) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key as written.
    pub key: String,
    /// The value as written, escapes not yet resolved.
    pub raw: String,
    /// 1-based line of the (last) definition.
    pub line: usize,
    /// Which input defined it (0 for the first file; see [`KeyFile::merge`]).
    pub origin: u32,
}

/// A `[group]` with its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group name without brackets.
    pub name: String,
    /// 1-based line of the first header of this group (0 for groups built in memory).
    pub line: usize,
    /// Entries in order of first appearance; a repeated key keeps its place and takes the new value.
    pub entries: Vec<Entry>,
    /// Which input first declared the group.
    pub origin: u32,
}

impl Group {
    /// Creates an empty group.
    pub fn new(name: impl Into<String>) -> Self {
        Group { name: name.into(), line: 0, entries: Vec::new(), origin: 0 }
    }

    /// The entry for `key`, if present.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Sets a raw (already escaped) value, replacing an existing one in place.
    pub fn set_raw(&mut self, key: &str, raw: impl Into<String>) {
        let raw = raw.into();
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.raw = raw;
        } else {
            self.entries.push(Entry { key: key.to_string(), raw, line: 0, origin: 0 });
        }
    }

    /// Sets `entry`, replacing one with the same key in place (keeping its position).
    pub fn set_entry(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    /// Sets a string value, escaping it the way GLib writes strings.
    pub fn set_string(&mut self, key: &str, value: &str) {
        self.set_raw(key, escape_value(value, false));
    }

    /// Sets a list value (`a;b;` form with a trailing separator, like GLib writes).
    pub fn set_list<S: AsRef<str>>(&mut self, key: &str, items: &[S]) {
        let mut raw = String::new();
        for item in items {
            raw.push_str(&escape_value(item.as_ref(), true));
            raw.push(';');
        }
        self.set_raw(key, raw);
    }

    /// Removes a key; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.key != key);
        before != self.entries.len()
    }
}

/// A parsed key file: groups in order of first appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFile {
    /// The groups; repeated group headers are merged into the first one.
    pub groups: Vec<Group>,
}

impl KeyFile {
    /// Parses key-file text with GLib's rules.
    pub fn parse(text: &str) -> Result<KeyFile, KeyFileError> {
        let mut kf = KeyFile::default();
        let mut current: Option<usize> = None;
        for (idx, raw_line) in text.split('\n').enumerate() {
            let lineno = idx + 1;
            let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
            let trimmed = line.trim_start_matches([' ', '\t']);
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if trimmed.starts_with('[') {
                let name = parse_group_header(trimmed)
                    .ok_or_else(|| KeyFileError::at(lineno, format!("Invalid group name: {trimmed}")))?;
                current = Some(match kf.groups.iter().position(|g| g.name == name) {
                    Some(pos) => pos,
                    None => {
                        kf.groups.push(Group { name: name.to_string(), line: lineno, entries: Vec::new(), origin: 0 });
                        kf.groups.len() - 1
                    }
                });
                continue;
            }
            let Some(eq) = trimmed.find('=') else {
                return Err(KeyFileError::at(
                    lineno,
                    format!("Key file contains line '{trimmed}' which is not a key-value pair, group, or comment"),
                ));
            };
            let Some(group_idx) = current else {
                return Err(KeyFileError::at(lineno, "Key file does not start with a group"));
            };
            let key = trimmed[..eq].trim_end_matches([' ', '\t']);
            if !is_valid_key(key) {
                return Err(KeyFileError::at(lineno, format!("Invalid key name: {key}")));
            }
            let value = trimmed[eq + 1..].trim_start_matches([' ', '\t']);
            let group = &mut kf.groups[group_idx];
            match group.entries.iter_mut().find(|e| e.key == key) {
                Some(e) => {
                    e.raw = value.to_string();
                    e.line = lineno;
                }
                None => {
                    group.entries.push(Entry { key: key.to_string(), raw: value.to_string(), line: lineno, origin: 0 })
                }
            }
        }
        Ok(kf)
    }

    /// The group named `name`, if present.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Lays `other` over this file: its groups are added, its keys replace
    /// ours; everything taken from it is tagged with `origin` so errors can
    /// name the file it came from (drop-in fragments, `-C` overrides).
    pub fn merge(&mut self, other: KeyFile, origin: u32) {
        for g in other.groups {
            if self.group(&g.name).is_none() {
                self.groups.push(Group { name: g.name.clone(), line: g.line, entries: Vec::new(), origin });
            }
            let target = self.group_mut(&g.name);
            for e in g.entries {
                target.set_entry(Entry { origin, ..e });
            }
        }
    }

    /// The group named `name`, created at the end if missing.
    pub fn group_mut(&mut self, name: &str) -> &mut Group {
        if let Some(pos) = self.groups.iter().position(|g| g.name == name) {
            &mut self.groups[pos]
        } else {
            self.groups.push(Group::new(name));
            self.groups.last_mut().expect("just pushed")
        }
    }

    /// Serializes the way GLib writes key files: groups separated by one
    /// blank line, a single trailing newline.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(&g.name);
            out.push_str("]\n");
            for e in &g.entries {
                out.push_str(&e.key);
                out.push('=');
                out.push_str(&e.raw);
                out.push('\n');
            }
        }
        out
    }
}

fn parse_group_header(line: &str) -> Option<&str> {
    let inner = line.trim_end_matches([' ', '\t']).strip_prefix('[')?.strip_suffix(']')?;
    if inner.is_empty() || inner.chars().any(|c| c == '[' || c == ']' || c.is_control()) {
        return None;
    }
    Some(inner)
}

fn is_valid_key(key: &str) -> bool {
    if key.is_empty() || key.starts_with(' ') {
        return false;
    }
    // GLib allows a locale suffix `key[locale]`; brackets are otherwise invalid.
    let base = match key.find('[') {
        Some(open) => {
            if !key.ends_with(']') || open == 0 {
                return false;
            }
            let locale = &key[open + 1..key.len() - 1];
            if locale.is_empty() || locale.contains(['[', ']']) {
                return false;
            }
            &key[..open]
        }
        None => key,
    };
    !base.contains([']', '=']) && !base.chars().any(|c| c.is_control())
}

/// Resolves GLib escapes in a single string value.
pub fn unescape_string(raw: &str) -> Result<String, String> {
    unescape(raw, None).map(|mut v| v.pop().unwrap_or_default())
}

/// Splits a raw list value on `;` (with `\;` literal) and resolves escapes.
/// An empty trailing item is dropped, so `a;b` and `a;b;` are equal.
pub fn parse_list(raw: &str) -> Result<Vec<String>, String> {
    let mut items = unescape(raw, Some(';'))?;
    if items.last().is_some_and(|s| s.is_empty()) {
        items.pop();
    }
    Ok(items)
}

fn unescape(raw: &str, separator: Option<char>) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('s') => cur.push(' '),
                Some('n') => cur.push('\n'),
                Some('t') => cur.push('\t'),
                Some('r') => cur.push('\r'),
                Some('\\') => cur.push('\\'),
                Some(s) if Some(s) == separator => cur.push(s),
                Some(other) => {
                    return Err(format!("Key file contains invalid escape sequence '\\{other}'"));
                }
                None => return Err("Key file contains escape character at end of line".to_string()),
            },
            c if Some(c) == separator => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    items.push(cur);
    Ok(items)
}

/// Escapes a value the way GLib writes it: leading blanks as `\s`, control
/// characters as `\n`, `\t`, `\r`, backslashes doubled, and (in lists) `;` as `\;`.
pub fn escape_value(value: &str, in_list: bool) -> String {
    let mut out = String::with_capacity(value.len());
    let mut leading = true;
    for c in value.chars() {
        match c {
            ' ' if leading => out.push_str("\\s"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            ';' if in_list => out.push_str("\\;"),
            c => out.push(c),
        }
        if c != ' ' {
            leading = false;
        }
    }
    out
}

/// Parses a GLib boolean: exactly `true`, `false`, `1` or `0`.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Parses an unsigned decimal integer (no sign, no blanks, no radix prefix).
pub fn parse_u64(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// Parses a signed decimal integer.
pub fn parse_i64(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    parse_u64(digits)?;
    raw.parse().ok()
}

/// Parses a size with an optional `K`/`M`/`G`/`T` suffix (powers of 1024,
/// case-insensitive; anything after the suffix letter is ignored; an unknown
/// suffix means bytes), as used by `region-*`, `size-limit` and `max-size`.
pub fn parse_size(raw: &str) -> Option<u64> {
    let digits_end = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let number: u64 = raw[..digits_end].parse().ok()?;
    let shift = match raw[digits_end..].chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        _ => 0,
    };
    number.checked_mul(1u64 << shift)
}

/// A reader over one group that remembers which keys were consumed, so the
/// caller can reject everything else (RAUC's strict mode, spec §0).
pub struct GroupReader<'a> {
    group: &'a Group,
    used: Vec<bool>,
}

impl<'a> GroupReader<'a> {
    /// Starts reading `group`.
    pub fn new(group: &'a Group) -> Self {
        GroupReader { group, used: vec![false; group.entries.len()] }
    }

    /// The group's name.
    pub fn name(&self) -> &'a str {
        &self.group.name
    }

    /// Marks `key` consumed and returns its entry.
    pub fn take(&mut self, key: &str) -> Option<&'a Entry> {
        let pos = self.group.entries.iter().position(|e| e.key == key)?;
        self.used[pos] = true;
        Some(&self.group.entries[pos])
    }

    /// A string value; an empty value is `Missing value for key '<k>'`.
    pub fn string(&mut self, key: &str) -> Result<Option<String>, KeyFileError> {
        let Some(e) = self.take(key) else {
            return Ok(None);
        };
        let v = unescape_string(&e.raw).map_err(|m| KeyFileError::at_entry(e, m))?;
        if v.is_empty() {
            return Err(KeyFileError::at_entry(e, format!("Missing value for key '{key}'")));
        }
        Ok(Some(v))
    }

    /// A string value where empty is allowed.
    pub fn string_or_empty(&mut self, key: &str) -> Result<Option<String>, KeyFileError> {
        let Some(e) = self.take(key) else {
            return Ok(None);
        };
        unescape_string(&e.raw).map(Some).map_err(|m| KeyFileError::at_entry(e, m))
    }

    /// A `;`-separated list.
    pub fn list(&mut self, key: &str) -> Result<Option<Vec<String>>, KeyFileError> {
        let Some(e) = self.take(key) else {
            return Ok(None);
        };
        parse_list(&e.raw).map(Some).map_err(|m| KeyFileError::at_entry(e, m))
    }

    /// A boolean.
    pub fn boolean(&mut self, key: &str) -> Result<Option<bool>, KeyFileError> {
        let Some(e) = self.take(key) else {
            return Ok(None);
        };
        parse_bool(&e.raw).map(Some).ok_or_else(|| {
            KeyFileError::at_entry(
                e,
                format!(
                    "Key '{key}' in group '[{}]' has value '{}' which cannot be interpreted as a boolean",
                    self.group.name, e.raw
                ),
            )
        })
    }

    /// An unsigned integer.
    pub fn uint(&mut self, key: &str) -> Result<Option<u64>, KeyFileError> {
        let Some(e) = self.take(key) else {
            return Ok(None);
        };
        parse_u64(&e.raw).map(Some).ok_or_else(|| {
            KeyFileError::at_entry(
                e,
                format!(
                    "Key '{key}' in group '[{}]' has value '{}' which cannot be interpreted as a number",
                    self.group.name, e.raw
                ),
            )
        })
    }

    /// Marks every key consumed (for groups whose keys are free-form).
    pub fn take_all(&mut self) -> &'a [Entry] {
        self.used.iter_mut().for_each(|u| *u = true);
        &self.group.entries
    }

    /// Fails with `Invalid key '<k>' in group '[<g>]'` for the first key not consumed.
    pub fn finish(self) -> Result<(), KeyFileError> {
        match self.used.iter().position(|u| !u) {
            Some(pos) => {
                let e = &self.group.entries[pos];
                Err(KeyFileError::at_entry(e, format!("Invalid key '{}' in group '[{}]'", e.key, self.group.name)))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_keys_comments_and_whitespace() {
        let kf = KeyFile::parse("# lead\n\n[a]\n  k1 =  v 1 \nk2=x\n[b]\n# c\nz=1\n").unwrap();
        assert_eq!(kf.groups.len(), 2);
        let a = kf.group("a").unwrap();
        assert_eq!(a.entry("k1").unwrap().raw, "v 1 ");
        assert_eq!(a.entry("k1").unwrap().line, 4);
        assert_eq!(kf.group("b").unwrap().entry("z").unwrap().raw, "1");
    }

    #[test]
    fn duplicate_keys_last_wins_and_groups_merge() {
        let kf = KeyFile::parse("[a]\nk=1\nj=0\nk=2\n[b]\nx=1\n[a]\nm=3\n").unwrap();
        let a = kf.group("a").unwrap();
        let keys: Vec<_> = a.entries.iter().map(|e| (e.key.as_str(), e.raw.as_str())).collect();
        assert_eq!(keys, vec![("k", "2"), ("j", "0"), ("m", "3")]);
        assert_eq!(kf.groups.len(), 2);
    }

    #[test]
    fn rejects_what_glib_rejects() {
        assert_eq!(KeyFile::parse("k=v\n").unwrap_err().message, "Key file does not start with a group");
        let e = KeyFile::parse("[a]\n;comment\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("not a key-value pair"), "{}", e.message);
        assert!(KeyFile::parse("[a]\nk:v\n").is_err());
        assert!(KeyFile::parse("[a\n").is_err());
        assert!(KeyFile::parse("[]\n").is_err());
        assert!(KeyFile::parse("[a]\n=v\n").is_err());
    }

    #[test]
    fn crlf_lines_are_accepted() {
        let kf = KeyFile::parse("[a]\r\nk=v\r\n").unwrap();
        assert_eq!(kf.group("a").unwrap().entry("k").unwrap().raw, "v");
    }

    #[test]
    fn escapes_and_lists() {
        assert_eq!(unescape_string(r"\sa\tb\\c\nd\r").unwrap(), " a\tb\\c\nd\r");
        assert!(unescape_string(r"a\x").unwrap_err().contains("invalid escape"));
        assert!(unescape_string("a\\").is_err());
        assert!(unescape_string(r"a\;b").is_err());
        assert_eq!(parse_list("a;b").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_list("a;b;").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_list(r"a\;b;c").unwrap(), vec!["a;b", "c"]);
        assert_eq!(parse_list("").unwrap(), Vec::<String>::new());
        assert_eq!(escape_value("  a b\\", false), r"\s\sa b\\");
        assert_eq!(escape_value("a;b", true), r"a\;b");
    }

    #[test]
    fn writes_like_glib() {
        let mut kf = KeyFile::default();
        kf.group_mut("one").set_string("k", " v");
        kf.group_mut("two").set_list("l", &["a", "b"]);
        assert_eq!(kf.to_text(), "[one]\nk=\\sv\n\n[two]\nl=a;b;\n");
        let back = KeyFile::parse(&kf.to_text()).unwrap();
        assert_eq!(back, {
            let mut k = kf.clone();
            k.groups[0].line = 1;
            k.groups[0].entries[0].line = 2;
            k.groups[1].line = 4;
            k.groups[1].entries[0].line = 5;
            k
        });
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("True"), None);
        assert_eq!(parse_u64("4096"), Some(4096));
        assert_eq!(parse_u64("+1"), None);
        assert_eq!(parse_u64("0x10"), None);
        assert_eq!(parse_i64("-3"), Some(-3));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1Gibibyte"), Some(1 << 30));
        assert_eq!(parse_size("7x"), Some(7));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn strict_reader_reports_unused_keys() {
        let kf = KeyFile::parse("[update]\ncompatible=x\nbogus=1\n").unwrap();
        let mut r = GroupReader::new(kf.group("update").unwrap());
        assert_eq!(r.string("compatible").unwrap().as_deref(), Some("x"));
        let e = r.finish().unwrap_err();
        assert_eq!(e.message, "Invalid key 'bogus' in group '[update]'");
        assert_eq!(e.line, Some(3));
        let kf = KeyFile::parse("[update]\ncompatible=\n").unwrap();
        let mut r = GroupReader::new(kf.group("update").unwrap());
        assert_eq!(r.string("compatible").unwrap_err().message, "Missing value for key 'compatible'");
    }
}
