//! rota's own interface next to RAUC's (`dev.rota.Installer1` on `/`),
//! so RAUC's stays exactly as RAUC defines it: `Cancel` (safe at any point
//! before activation) and `Details`, a structured view of the running
//! installation — phase, current step, slot and bytes.

use super::Service;
use super::installer::RaucError;
use crate::install::control::CancelRefused;
use rota_dbus::Dict;
use std::collections::HashMap;
use std::sync::Arc;
use zbus::object_server::InterfaceRef;
use zbus::{OwnedVariant, interface};

/// What `Details` shows.
#[derive(Debug, Clone, Default)]
pub struct Details {
    installing: bool,
    phase: String,
    step: String,
    percentage: i32,
    slot: String,
    done: u64,
    total: u64,
    /// `done` when the last bytes update was announced.
    announced: u64,
    /// Files of a tree image done and in total.
    files: (u64, u64),
    /// `files.0` when last announced.
    files_announced: u64,
    /// The final numbers of the images written so far (`<slot>` → name, value).
    counts: Vec<(String, &'static str, u64)>,
}

/// Whether a count that reached `done` of `total` is announced: for a new
/// slot, at the end, or `step` past the last announced value `last` (which
/// then moves on).
fn due(new_slot: bool, done: u64, total: u64, step: u64, last: &mut u64) -> bool {
    if new_slot || done >= total || done.saturating_sub(*last) >= step {
        *last = done;
        return true;
    }
    false
}

/// Announce byte counts at most every this many bytes (or at the end).
const BYTES_STEP: u64 = 4 << 20;

impl Details {
    /// An installation started.
    pub fn start(&mut self) -> bool {
        *self = Details { installing: true, phase: "checking".into(), ..Details::default() };
        true
    }

    /// A progress update.
    pub fn progress(&mut self, percentage: i32, step: &str) -> bool {
        self.percentage = percentage;
        self.step = step.to_string();
        true
    }

    /// The engine entered `phase`.
    pub fn phase(&mut self, phase: &str) -> bool {
        self.phase = phase.to_string();
        true
    }

    /// Makes `slot` the current slot; returns whether it was another.
    fn switch_slot(&mut self, slot: &str) -> bool {
        let new_slot = self.slot != slot;
        self.slot = slot.to_string();
        new_slot
    }

    /// `done` of `total` bytes for `slot`; announced in steps, not per write.
    pub fn bytes(&mut self, slot: &str, done: u64, total: u64) -> bool {
        (self.done, self.total) = (done, total);
        let new_slot = self.switch_slot(slot);
        due(new_slot, done, total, BYTES_STEP, &mut self.announced)
    }

    /// `done` of `total` files of a tree image for `slot`; announced in
    /// steps of a hundredth of the files, and at the end.
    pub fn files(&mut self, slot: &str, done: u64, total: u64) -> bool {
        self.files = (done, total);
        let new_slot = self.switch_slot(slot);
        due(new_slot, done, total, (total / 100).max(1), &mut self.files_announced)
    }

    /// The final numbers of the image written to `slot`.
    pub fn counts(&mut self, slot: &str, counts: &[(&'static str, u64)]) -> bool {
        self.counts.retain(|(s, _, _)| s != slot);
        self.counts.extend(counts.iter().map(|(k, v)| (slot.to_string(), *k, *v)));
        true
    }

    /// The installation ended.
    pub fn finish(&mut self) -> bool {
        self.installing = false;
        self.phase = "idle".into();
        true
    }

    fn dict(&self) -> Dict {
        use super::dicts::owned;
        use zbus::Variant;
        Dict::from([
            ("operation".to_string(), owned(Variant::from(if self.installing { "installing" } else { "idle" }))),
            ("phase".to_string(), owned(Variant::from(self.phase.clone()))),
            ("step".to_string(), owned(Variant::from(self.step.clone()))),
            ("percentage".to_string(), self.percentage.into()),
            ("slot".to_string(), owned(Variant::from(self.slot.clone()))),
            ("bytes-done".to_string(), self.done.into()),
            ("bytes-total".to_string(), self.total.into()),
            ("files-done".to_string(), self.files.0.into()),
            ("files-total".to_string(), self.files.1.into()),
            ("results".to_string(), owned(Variant::from(self.results()))),
        ])
    }

    /// `slot` → (name → value) of the final numbers.
    fn results(&self) -> HashMap<String, HashMap<String, u64>> {
        let mut out: HashMap<String, HashMap<String, u64>> = HashMap::new();
        for (slot, k, v) in &self.counts {
            out.entry(slot.clone()).or_default().insert(k.to_string(), *v);
        }
        out
    }
}

/// The interface object (state behind a mutex: no call needs the
/// interface exclusively, so a long `Inspect` holds up nothing).
pub struct Control {
    service: Arc<Service>,
    details: std::sync::Mutex<Details>,
}

impl Control {
    /// The interface for `service`, idle.
    pub fn new(service: Arc<Service>) -> Control {
        Control { service, details: std::sync::Mutex::new(Details { phase: "idle".into(), ..Details::default() }) }
    }
}

/// Applies `f` to the details and announces them if `f` says so.
pub async fn update(iref: &InterfaceRef<Control>, f: impl FnOnce(&mut Details) -> bool) {
    let c = iref.get().await;
    let changed = f(&mut c.details.lock().expect("not poisoned"));
    if changed && let Err(e) = c.details_changed(iref.signal_emitter()).await {
        tracing::warn!("Failed to announce details: {e}");
    }
}

#[interface(name = "dev.rota.Installer1")]
impl Control {
    /// Cancels the running installation; refused once it activates, and while
    /// the bundle's own update handler installs it.
    fn cancel(&self, #[zbus(header)] header: zbus::message::Header<'_>) -> Result<(), RaucError> {
        super::no_arguments(&header)?;
        let current = self.service.current.lock().expect("not poisoned").clone();
        match current.map(|c| c.cancel()) {
            None => Err(RaucError::Code30("No installation running".into())),
            Some(Ok(())) => Ok(()),
            Some(Err(CancelRefused::Activating)) => {
                Err(RaucError::Code30("Too late to cancel: the installation is activating the new slots".into()))
            }
            Some(Err(CancelRefused::Handler)) => Err(RaucError::Code30(
                "Cannot cancel: the bundle's update handler is installing it, and it cannot be interrupted safely"
                    .into(),
            )),
        }
    }

    /// Opens and verifies a bundle (same arguments as `InspectBundle`) and
    /// returns everything `info` shows, signer chains included: `manifest`
    /// (its text; a crypt bundle's `crypt-key` left out), `manifest-hash`,
    /// `format`, `encrypted`, `verified`, `chains`, `recipients`, `trees`.
    #[zbus(out_args("info"))]
    async fn inspect(
        &self,
        source: String,
        args: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Dict, RaucError> {
        let caller = super::caller::Caller::of(conn, &header).await.map_err(|e| RaucError::Code30(e.to_string()))?;
        let (info, text) = super::open_bundle(&self.service, source, args, caller).await?;
        Ok(super::dicts::bundle_info_dict(&info, &text))
    }

    /// `operation`, `phase` (`idle`, `checking`, `writing`, `activating`),
    /// `step`, `percentage`, `slot`, `bytes-done`, `bytes-total`,
    /// `files-done`, `files-total` (tree images), and `results`: per slot
    /// the final numbers of a tree image (`files-reused`, `files-copied`,
    /// `files-fetched`, `bytes-reused`, `bytes-copied`, `bytes-fetched`,
    /// `bytes-fetched-stored`) of the last installation.
    #[zbus(property)]
    fn details(&self) -> Dict {
        self.details.lock().expect("not poisoned").dict()
    }
}
