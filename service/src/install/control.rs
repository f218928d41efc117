//! Cancelling an installation from outside (beyond RAUC, spec §15 #1):
//! allowed at any point before activation, refused from then on. The
//! engine checks between steps and the image copy checks on every write,
//! so a cancelled install stops within one buffer and activates nothing.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const COMMITTED: u8 = 2;
const HANDED_OVER: u8 = 3;

/// The text every cancelled installation fails with.
pub const CANCELLED_TEXT: &str = "Installation cancelled";

/// Shared between an installation and whoever may cancel it.
#[derive(Debug, Default)]
pub struct InstallControl {
    state: AtomicU8,
}

/// Why a cancel request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefused {
    /// The installation already started activating the new slots.
    Activating,
    /// The bundle's own update handler installs it: rota cannot tell where
    /// its point of no return is, so it is not interrupted.
    Handler,
}

impl InstallControl {
    /// Requests cancellation; refused once activation has begun.
    pub fn cancel(&self) -> std::result::Result<(), CancelRefused> {
        match self.state.compare_exchange(RUNNING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) | Err(CANCELLED) => Ok(()),
            Err(HANDED_OVER) => Err(CancelRefused::Handler),
            Err(_) => Err(CancelRefused::Activating),
        }
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::SeqCst) == CANCELLED
    }

    /// Fails with [`CANCELLED_TEXT`] once cancellation was requested.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() { Err(Error::Failed(CANCELLED_TEXT.into())) } else { Ok(()) }
    }

    /// Hands the installation over to the bundle's update handler: from
    /// now on cancelling is refused. Fails if a cancel came first.
    pub fn hand_over(&self) -> Result<()> {
        match self.state.compare_exchange(RUNNING, HANDED_OVER, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) | Err(HANDED_OVER) => Ok(()),
            Err(_) => Err(Error::Failed(CANCELLED_TEXT.into())),
        }
    }

    /// Enters activation: from now on cancelling is refused. Fails if a
    /// cancel came first.
    pub fn commit(&self) -> Result<()> {
        match self.state.compare_exchange(RUNNING, COMMITTED, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) | Err(COMMITTED) => Ok(()),
            Err(_) => Err(Error::Failed(CANCELLED_TEXT.into())),
        }
    }
}

/// A writer that refuses further bytes once its installation is cancelled.
pub struct Guarded<'a> {
    /// Where the bytes go.
    pub out: &'a mut dyn std::io::Write,
    /// The installation's control.
    pub control: &'a InstallControl,
}

impl std::io::Write for Guarded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.control.is_cancelled() {
            return Err(std::io::Error::other(CANCELLED_TEXT));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_before_commit_wins_and_after_commit_is_refused() {
        let c = InstallControl::default();
        assert!(c.check().is_ok());
        c.cancel().unwrap();
        c.cancel().unwrap();
        assert_eq!(c.check().unwrap_err().to_string(), CANCELLED_TEXT);
        assert!(c.commit().is_err());
        let c = InstallControl::default();
        c.commit().unwrap();
        assert_eq!(c.cancel(), Err(CancelRefused::Activating));
        assert!(c.check().is_ok());
        let c = InstallControl::default();
        c.hand_over().unwrap();
        assert_eq!(c.cancel(), Err(CancelRefused::Handler));
        let c = InstallControl::default();
        c.cancel().unwrap();
        assert!(c.hand_over().is_err());
    }
}
