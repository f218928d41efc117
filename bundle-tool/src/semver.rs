//! RAUC's semantic-version comparison (spec §0), used by `min-rauc-version`,
//! `min-bundle-version` and polling.

use std::cmp::Ordering;

/// A parsed version: 1–3 numeric core parts, optional pre-release fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemVer {
    core: [u64; 3],
    pre: Vec<String>,
}

impl SemVer {
    /// Parses `core[-pre][+build]`; the build part is ignored.
    pub fn parse(s: &str) -> Option<SemVer> {
        let without_build = match s.rfind('+') {
            Some(p) => &s[..p],
            None => s,
        };
        let (core_str, pre) = match without_build.rfind('-') {
            Some(p) => (&without_build[..p], Some(&without_build[p + 1..])),
            None => (without_build, None),
        };
        let parts: Vec<&str> = core_str.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        let mut core = [0u64; 3];
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            core[i] = p.parse().ok()?;
        }
        let pre = match pre {
            Some(p) => p.split('.').map(str::to_string).collect(),
            None => Vec::new(),
        };
        Some(SemVer { core, pre })
    }
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn cmp_field(a: &str, b: &str) -> Ordering {
    match (is_numeric(a), is_numeric(b)) {
        (true, true) => {
            let (x, y) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        }
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.as_bytes().cmp(b.as_bytes()),
    }
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core.cmp(&other.core).then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                for (a, b) in self.pre.iter().zip(&other.pre) {
                    let o = cmp_field(a, b);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                self.pre.len().cmp(&other.pre.len())
            }
        })
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SemVer {
        SemVer::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn ordering() {
        assert!(v("1.2.3") < v("1.2.4"));
        assert!(v("1.10") > v("1.9"));
        assert_eq!(v("1"), v("1.0.0"));
        assert!(v("1.16-dev") < v("1.16"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-alpha.beta"));
        assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert_eq!(v("1.0.0+build5"), v("1.0.0"));
        assert_eq!(v("2024.08-1"), v("2024.8.0-1"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1.2.3.4", "a.b", "1..2", "v1.0", "1.-2"] {
            assert!(SemVer::parse(bad).is_none(), "{bad}");
        }
    }
}
