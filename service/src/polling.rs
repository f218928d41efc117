//! Polling for updates (spec §11.1, `[polling]`): the decisions, apart from
//! the bus — when to poll next, whether a polled bundle is an update
//! candidate, whether it is installed without a caller, and whether the
//! device reboots afterwards. The service's poller (`dbus::poller`) drives
//! them.

use crate::config::PollingSection;
use rota_bundle::semver::SemVer;
use std::time::Duration;

/// `summary` when the bundle's version is a higher semantic version.
pub const HIGHER: &str = "update candidate found: higher semantic version";
/// `summary` when the bundle's version differs.
pub const DIFFERENT: &str = "update candidate found: different version";
/// `summary` when the bundle is no candidate.
pub const NO_CANDIDATE: &str = "no update candidate available";
/// `summary` when the server has no bundle (`204`).
pub const NO_BUNDLE: &str = "no update bundle available";

/// RAUC's test hook `RAUC_TEST_POLLING_SPEEDUP`: every polling delay and
/// the scheduler's tick divided by a factor from 1 to 1000.
pub const SPEEDUP_ENV: &str = "RAUC_TEST_POLLING_SPEEDUP";

/// The factor of [`SPEEDUP_ENV`] (1 without it); an error names a value
/// out of range or not a number, in RAUC's words.
pub fn speedup() -> Result<u32, String> {
    let Some(value) = std::env::var_os(SPEEDUP_ENV) else { return Ok(1) };
    let text = value.to_string_lossy();
    // Leading digits count, as with RAUC's g_ascii_strtoll.
    let digits: String = text.trim_start().chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        Ok(n @ 1..=1000) => Ok(n),
        _ => Err(format!("Invalid {SPEEDUP_ENV} value '{text}'")),
    }
}

fn scaled(d: Duration) -> Duration {
    d / speedup().unwrap_or(1)
}

/// The scheduler's tick (10 s; `ROTA_POLL_TICK_MS` shortens it for tests,
/// and with it the short delay of three ticks; RAUC's speedup divides it).
pub fn tick() -> Duration {
    let ms = std::env::var("ROTA_POLL_TICK_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000u64);
    scaled(Duration::from_millis(ms.max(1))).max(Duration::from_millis(1))
}

/// The short delay: after `Poll()`, while busy or inhibited, after an
/// installation (30 s with the standard tick).
pub fn short_delay() -> Duration {
    tick() * 3
}

/// `CLOCK_BOOTTIME` now (keeps counting during suspend).
pub fn boottime() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain clock read into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Delay before the first poll: a random 10–90 % of the interval, so a
/// fleet booted together does not poll together.
pub fn first_delay(p: &PollingSection) -> Duration {
    let mut r = [0u8; 2];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
        .map(|()| u16::from_le_bytes(r))
        .unwrap_or(0x8000);
    let share = 0.1 + 0.8 * f64::from(random) / f64::from(u16::MAX);
    scaled(Duration::from_secs_f64(p.interval_sec as f64 * share))
}

/// Delay after a poll: the interval, times one more than the recent
/// errors, at most `max-interval-sec`.
pub fn next_delay(p: &PollingSection, recent_errors: u64) -> Duration {
    scaled(Duration::from_secs(p.interval_sec.saturating_mul(recent_errors + 1).min(p.max_interval_sec)))
}

/// Which candidate criterion a bundle of `bundle_version` meets on a system
/// running `system_version`, as its `summary`; `None` if none.
pub fn candidate(criteria: &[String], system_version: &str, bundle_version: &str) -> Option<&'static str> {
    criteria.iter().find_map(|c| meets(c, system_version, bundle_version))
}

fn meets(criterion: &str, system_version: &str, bundle_version: &str) -> Option<&'static str> {
    match criterion {
        "higher-semver" => match (SemVer::parse(bundle_version), SemVer::parse(system_version)) {
            (Some(b), Some(s)) if b > s => Some(HIGHER),
            _ => None,
        },
        "different-version" => (bundle_version != system_version).then_some(DIFFERENT),
        _ => None,
    }
}

/// Whether a candidate is installed without a caller: `always`, or one of
/// the install criteria is met.
pub fn auto_install(p: &PollingSection, system_version: &str, bundle_version: &str) -> bool {
    p.install_criteria.iter().any(|c| c == "always" || meets(c, system_version, bundle_version).is_some())
}

/// Whether to reboot after an automatic installation that `succeeded` and
/// wrote `slots` slots and `artifacts` artifacts.
pub fn reboot_after(p: &PollingSection, succeeded: bool, slots: usize, artifacts: usize) -> bool {
    let has = |c: &str| p.reboot_criteria.iter().any(|r| r == c);
    if succeeded {
        (has("updated-slots") && slots > 0) || (has("updated-artifacts") && artifacts > 0)
    } else {
        has("failed-update")
    }
}

/// Unix seconds of an HTTP date in the preferred format
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7).
pub fn parse_http_date(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else { return None };
    let month = MONTHS.iter().position(|m| *m == month)? as i64;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let (y, mo) = if month < 2 { (year - 1, month + 10) } else { (year, month - 2) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Sun, 22 Nov 2026 08:48:00 GMT"), Some(1_795_337_280));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
    }

    use super::*;

    fn section(install: &[&str], reboot: &[&str]) -> PollingSection {
        PollingSection {
            url: "http://h/b.raucb".into(),
            interval_sec: 100,
            max_interval_sec: 250,
            inhibit_files: vec![],
            candidate_criteria: vec!["higher-semver".into()],
            install_criteria: install.iter().map(|s| s.to_string()).collect(),
            reboot_criteria: reboot.iter().map(|s| s.to_string()).collect(),
            reboot_cmd: vec!["reboot".into()],
        }
    }

    #[test]
    fn candidates() {
        let higher = ["higher-semver".to_string()];
        assert_eq!(candidate(&higher, "1.2.0", "1.10.0"), Some(HIGHER));
        assert_eq!(candidate(&higher, "1.2.0", "1.2.0"), None);
        assert_eq!(candidate(&higher, "2.0", "1.9"), None);
        assert_eq!(candidate(&higher, "1.0", "not a version"), None);
        let both = ["higher-semver".to_string(), "different-version".to_string()];
        assert_eq!(candidate(&both, "2.0", "1.9"), Some(DIFFERENT));
        assert_eq!(candidate(&both, "2.0", "2.0"), None);
    }

    #[test]
    fn schedule_backs_off_and_is_capped() {
        let p = section(&[], &[]);
        assert_eq!(next_delay(&p, 0), Duration::from_secs(100));
        assert_eq!(next_delay(&p, 1), Duration::from_secs(200));
        assert_eq!(next_delay(&p, 5), Duration::from_secs(250));
        for _ in 0..20 {
            let d = first_delay(&p);
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(90), "{d:?}");
        }
    }

    #[test]
    fn install_and_reboot_criteria() {
        assert!(!auto_install(&section(&[], &[]), "1.0", "2.0"));
        assert!(auto_install(&section(&["always"], &[]), "1.0", "1.0"));
        assert!(auto_install(&section(&["higher-semver"], &[]), "1.0", "2.0"));
        assert!(!auto_install(&section(&["higher-semver"], &[]), "2.0", "1.0"));
        let p = section(&[], &["updated-slots", "failed-update"]);
        assert!(reboot_after(&p, true, 1, 0));
        assert!(!reboot_after(&p, true, 0, 1));
        assert!(reboot_after(&p, false, 0, 0));
        assert!(reboot_after(&section(&[], &["updated-artifacts"]), true, 0, 2));
        assert!(!reboot_after(&section(&[], &["updated-slots"]), false, 0, 0));
    }
}
