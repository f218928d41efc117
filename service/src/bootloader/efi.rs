//! UEFI through `efibootmgr`: boot entries labelled with the slot boot names.

use super::Bootloader;
use crate::config::SlotConfig;
use crate::error::{Error, Result, failed};
use crate::tools;

pub(super) struct Efi {
    pub(super) use_bootnext: bool,
    pub(super) slots: Vec<SlotConfig>,
}

/// What `efibootmgr` reports.
#[derive(Debug, Default)]
struct EfiState {
    entries: Vec<(String, String)>,
    order: Vec<String>,
    next: Option<String>,
    current: Option<String>,
}

fn parse(text: &str) -> EfiState {
    let mut s = EfiState::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("BootNext: ") {
            s.next = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("BootCurrent: ") {
            s.current = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("BootOrder: ") {
            s.order = v.trim().split(',').filter(|x| !x.is_empty()).map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix("Boot") {
            let (num, tail) = rest.split_at(rest.len().min(4));
            let mark = tail.chars().next();
            if num.len() == 4 && num.chars().all(|c| c.is_ascii_hexdigit()) && matches!(mark, Some('*' | ' ')) {
                let label = tail[1..].trim_start_matches(' ');
                let label = label.split('\t').next().unwrap_or("").trim_end();
                s.entries.push((num.to_string(), label.to_string()));
            }
        }
    }
    s
}

impl Efi {
    fn state(&self) -> Result<EfiState> {
        Ok(parse(&tools::run::<&str>("efibootmgr", &[])?.stdout))
    }

    /// The entry number of `b`, creating it when `efi-loader`/`efi-cmdline` say how.
    fn entry(&self, state: &EfiState, b: &str) -> Result<String> {
        if let Some((n, _)) = state.entries.iter().find(|(_, l)| l == b) {
            return Ok(n.clone());
        }
        let slot = self.slots.iter().find(|s| s.bootname.as_deref() == Some(b));
        let Some((slot, loader, cmdline)) =
            slot.and_then(|s| Some((s, s.efi_loader.as_ref()?, s.efi_cmdline.as_ref()?)))
        else {
            return failed(format!("Did not find efi entry for bootname '{b}'!"));
        };
        let disk = std::fs::canonicalize(&slot.device).unwrap_or_else(|_| slot.device.clone());
        let dev = disk.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let part = std::fs::read_to_string(format!("/sys/class/block/{dev}/partition"))
            .map_err(|e| Error::Failed(format!("Failed to find the partition number of {}: {e}", disk.display())))?;
        let disk_s = disk.to_string_lossy().into_owned();
        tools::run(
            "efibootmgr",
            &[
                "--create-only",
                "--disk",
                &disk_s,
                "--part",
                part.trim(),
                "--label",
                b,
                "--loader",
                loader,
                "--unicode",
                cmdline,
            ],
        )?;
        let state = self.state()?;
        match state.entries.iter().find(|(_, l)| l == b) {
            Some((n, _)) => Ok(n.clone()),
            None => failed(format!("Did not find efi entry for bootname '{b}'!")),
        }
    }

    fn set_order(&self, order: &[String]) -> Result<()> {
        tools::run("efibootmgr", &["--bootorder", &order.join(",")]).map(|_| ())
    }
}

impl Bootloader for Efi {
    fn set_state(&self, b: &str, good: bool) -> Result<()> {
        let s = self.state()?;
        let n = self.entry(&s, b)?;
        let mut order: Vec<String> = s.order.iter().filter(|o| **o != n).cloned().collect();
        if good {
            order.insert(0, n);
        }
        self.set_order(&order)
    }

    fn set_primary(&self, b: &str) -> Result<()> {
        if !self.use_bootnext {
            return self.set_state(b, true);
        }
        let s = self.state()?;
        let n = self.entry(&s, b)?;
        tools::run("efibootmgr", &["--bootnext", &n]).map(|_| ())
    }

    fn get_state(&self, b: &str) -> Result<bool> {
        let s = self.state()?;
        let n = self.entry(&s, b)?;
        Ok(s.order.contains(&n))
    }

    fn get_primary(&self) -> Result<String> {
        let s = self.state()?;
        let label = |n: &str| s.entries.iter().find(|(e, _)| e == n).map(|(_, l)| l.clone());
        let is_slot = |l: &str| self.slots.iter().any(|s| s.bootname.as_deref() == Some(l));
        if let Some(next) = &s.next
            && let Some(l) = label(next)
            && is_slot(&l)
        {
            return Ok(l);
        }
        for n in &s.order {
            if let Some(l) = label(n)
                && is_slot(&l)
            {
                return Ok(l);
            }
        }
        failed("Unable to find primary boot slot")
    }

    fn current_hint(&self) -> Option<String> {
        let s = self.state().ok()?;
        let cur = s.current.as_ref()?;
        let (_, label) = s.entries.iter().find(|(n, _)| n == cur)?;
        self.slots.iter().any(|sl| sl.bootname.as_deref() == Some(label)).then(|| label.clone())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_efibootmgr_output() {
        let s = super::parse(
            "BootCurrent: 0001\nTimeout: 1 seconds\nBootNext: 0002\nBootOrder: 0001,0002,0000\n\
             Boot0000* UiApp\tFvVol(...)\nBoot0001* A\tHD(1,GPT,...)\nBoot0002  B\tHD(2,GPT,...)\n",
        );
        assert_eq!(s.current.as_deref(), Some("0001"));
        assert_eq!(s.next.as_deref(), Some("0002"));
        assert_eq!(s.order, ["0001", "0002", "0000"]);
        assert_eq!(s.entries[1], ("0001".to_string(), "A".to_string()));
        assert_eq!(s.entries[2], ("0002".to_string(), "B".to_string()));
    }
}
