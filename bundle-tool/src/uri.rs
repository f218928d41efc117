//! Bundle locations as RAUC reads them: a URI scheme as GLib recognises
//! one (`g_uri_parse_scheme`), and `file:` URIs turned into paths with
//! GLib's rules and messages (`g_filename_from_uri`), since RAUC passes
//! those messages on (`Conversion error: …`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The scheme of `s` if it starts with one (`[A-Za-z][A-Za-z0-9+.-]*:`).
pub fn scheme(s: &str) -> Option<&str> {
    let (name, _) = s.split_once(':')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
        .then_some(name)
}

/// The path a `file:` URI names and the host it gives, if any. Errors are
/// GLib's texts: no `file:/` start, a `#`, an empty or malformed host, and
/// escapes that are malformed or decode to NUL or `/`.
pub fn filename_from_uri(uri: &str) -> Result<(PathBuf, Option<String>), String> {
    let has_prefix = |s: &str, p: &str| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p);
    if !has_prefix(uri, "file:/") {
        return Err(format!("The URI “{uri}” is not an absolute URI using the “file” scheme"));
    }
    let mut path = &uri["file:".len()..];
    if path.contains('#') {
        return Err(format!("The local file URI “{uri}” may not include a “#”"));
    }
    let mut host = None;
    if path.starts_with("///") {
        path = &path[2..];
    } else if let Some(rest) = path.strip_prefix("//") {
        let Some(end) = rest.find('/') else {
            return Err(format!("The URI “{uri}” is invalid"));
        };
        // Escapes never make a valid host name: escaped ASCII is refused,
        // anything else is not a letter or digit.
        let name = &rest[..end];
        if name.contains('%') || !valid_hostname(name) {
            return Err(format!("The hostname of the URI “{uri}” is invalid"));
        }
        if !name.is_empty() {
            host = Some(name.to_string());
        }
        path = &rest[end..];
    }
    let path = unescape(path).ok_or_else(|| format!("The URI “{uri}” contains invalidly escaped characters"))?;
    Ok((PathBuf::from(OsString::from_vec(path)), host))
}

/// `%XX` escapes decoded (to any byte); `None` when one is malformed or
/// decodes to NUL or `/`.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok().filter(|_| hex.bytes().all(|c| c.is_ascii_hexdigit()))?;
            if b == 0 || b == b'/' {
                return None;
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Dot-separated labels of letters, digits and inner `-`, the last one
/// starting with a letter (an optional final dot allowed); empty is fine.
fn valid_hostname(h: &str) -> bool {
    if h.is_empty() {
        return true;
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    let labels: Vec<&str> = h.split('.').collect();
    labels.iter().all(|l| {
        l.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }) && labels.last().is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_as_glib_finds_them() {
        let cases = [
            ("file://x", Some("file")),
            ("a.b-c+d:x", Some("a.b-c+d")),
            ("File:x", Some("File")),
            ("1a:b", None),
            ("/abs", None),
            ("rel/x", None),
            ("a_b:c", None),
            (":x", None),
            ("-a:b", None),
        ];
        for (s, expected) in cases {
            assert_eq!(scheme(s), expected, "{s}");
        }
    }

    #[test]
    fn file_uris_as_glib_converts_them() {
        let ok = [
            ("file:/good-bundle.raucb", "/good-bundle.raucb", None),
            ("file:///a/b%20c", "/a/b c", None),
            ("file://host/a", "/a", Some("host")),
            ("file://localhost/a", "/a", Some("localhost")),
            ("FILE:/x", "/x", None),
            ("file:////a", "//a", None),
            ("file://a-b.c./x", "/x", Some("a-b.c.")),
            ("file:/%41%e2%82%ac", "/A€", None),
        ];
        for (uri, path, host) in ok {
            assert_eq!(filename_from_uri(uri), Ok((PathBuf::from(path), host.map(str::to_string))), "{uri}");
        }
        let invalid = |u: &str| format!("The URI “{u}” is invalid");
        let escapes = |u: &str| format!("The URI “{u}” contains invalidly escaped characters");
        let bad_host = |u: &str| format!("The hostname of the URI “{u}” is invalid");
        let relative = |u: &str| format!("The URI “{u}” is not an absolute URI using the “file” scheme");
        let errors = [
            ("file://good-bundle.raucb", invalid("file://good-bundle.raucb")),
            ("file://", invalid("file://")),
            ("file:rel", relative("file:rel")),
            ("file:", relative("file:")),
            ("file:/a#b", "The local file URI “file:/a#b” may not include a “#”".to_string()),
            ("file:/a%2", escapes("file:/a%2")),
            ("file:/a%00b", escapes("file:/a%00b")),
            ("file:/a%2Fb", escapes("file:/a%2Fb")),
            ("file://ho st/a", bad_host("file://ho st/a")),
            ("file://[::1]/a", bad_host("file://[::1]/a")),
            ("file://127.0.0.1/a", bad_host("file://127.0.0.1/a")),
            ("file://a%41/x", bad_host("file://a%41/x")),
            ("file://a-.b/x", bad_host("file://a-.b/x")),
            ("file://a..b/x", bad_host("file://a..b/x")),
            ("file://.a/x", bad_host("file://.a/x")),
        ];
        for (uri, message) in errors {
            assert_eq!(filename_from_uri(uri), Err(message), "{uri}");
        }
        // Escaped bytes need not be UTF-8.
        let (p, _) = filename_from_uri("file:/%ff").unwrap();
        assert_eq!(p.as_os_str().as_encoded_bytes(), b"/\xff");
    }
}
