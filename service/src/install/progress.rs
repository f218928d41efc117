//! Progress reporting as RAUC does it (spec §6.9): a tree of weighted steps;
//! the percentage is the sum of the finished parts of every open step,
//! capped at 99 until the root step ends. Messages are the step texts, then
//! `<text> done.` or `<text> failed.`.

/// Receives progress updates: (percentage, message, nesting depth).
pub trait ProgressSink {
    /// One update.
    fn progress(&mut self, percentage: i32, message: &str, depth: i32);

    /// A status message from a handler (spec §6.7); logged unless the sink shows it.
    fn message(&mut self, text: &str) {
        tracing::info!("{text}");
    }

    /// Where the installation is: `checking`, `writing` or `activating`.
    fn phase(&mut self, _phase: &str) {}

    /// `done` of `total` bytes of the image for `slot` (a slot or repo name) are written.
    fn bytes(&mut self, _slot: &str, _done: u64, _total: u64) {}

    /// `done` of `total` files of a tree image for `slot` are in place or staged.
    fn files(&mut self, _slot: &str, _done: u64, _total: u64) {}

    /// The final numbers of an image written to `slot` (for tree images:
    /// files reused, copied and fetched, and their bytes).
    fn counts(&mut self, _slot: &str, _counts: &[(&'static str, u64)]) {}
}

impl<F: FnMut(i32, &str, i32)> ProgressSink for F {
    fn progress(&mut self, percentage: i32, message: &str, depth: i32) {
        self(percentage, message, depth)
    }
}

struct Step {
    text: String,
    substeps: u32,
    /// Share of the total (percent) this step covers.
    share: f64,
    /// Percent of the total already completed inside this step.
    done: f64,
}

/// The open steps and the running percentage.
pub struct Progress<'a> {
    sink: &'a mut dyn ProgressSink,
    stack: Vec<Step>,
    completed: f64,
    last: i32,
}

impl<'a> Progress<'a> {
    /// A new tracker reporting to `sink`.
    pub fn new(sink: &'a mut dyn ProgressSink) -> Self {
        Progress { sink, stack: Vec::new(), completed: 0.0, last: 0 }
    }

    fn percentage(&self) -> i32 {
        // A tolerance keeps sums like 40 + 3 from flooring to 42.
        let p = (self.completed + 1e-9).floor() as i32;
        if self.stack.is_empty() { p.min(100) } else { p.min(99) }
    }

    fn emit(&mut self, message: &str, depth: usize) {
        let p = self.percentage();
        self.last = p;
        self.sink.progress(p, message, depth as i32);
    }

    /// Adds `delta` percent to the total and to every open step.
    fn add(&mut self, delta: f64) {
        self.completed += delta;
        for s in &mut self.stack {
            s.done += delta;
        }
    }

    /// Opens a step with `weight` (share of the parent's sub-steps) and `substeps`.
    pub fn begin(&mut self, text: &str, weight: u32, substeps: u32) {
        let share = match self.stack.last() {
            None => 100.0,
            Some(parent) => weight as f64 * parent.share / parent.substeps.max(1) as f64,
        };
        self.stack.push(Step { text: text.to_string(), substeps, share, done: 0.0 });
        self.emit(text, self.stack.len());
    }

    /// Closes the innermost step as done or failed.
    pub fn end(&mut self, success: bool) {
        let Some(step) = self.stack.last() else {
            return;
        };
        let remaining = (step.share - step.done).max(0.0);
        let message = format!("{} {}", step.text, if success { "done." } else { "failed." });
        let depth = self.stack.len();
        if success {
            self.add(remaining);
        }
        self.stack.pop();
        if self.stack.is_empty() && !success {
            self.completed = 100.0;
        }
        self.emit(&message, depth);
    }

    /// Reports that `fraction` (0..=1) of the innermost step is done, emitting
    /// an update with the step's text each time a whole percent is crossed
    /// (the step's end reports the last one).
    pub fn fraction(&mut self, fraction: f64) {
        let Some(step) = self.stack.last() else {
            return;
        };
        let target = step.share * fraction.clamp(0.0, 1.0);
        if target <= step.done {
            return;
        }
        let text = step.text.clone();
        self.add(target - step.done);
        if fraction < 1.0 && self.percentage() > self.last {
            self.emit(&text, self.stack.len());
        }
    }

    /// Tells the sink which phase the installation is in.
    pub fn phase(&mut self, phase: &str) {
        self.sink.phase(phase);
    }

    /// Tells the sink how far the current image is written.
    pub fn bytes(&mut self, slot: &str, done: u64, total: u64) {
        self.sink.bytes(slot, done, total);
    }

    /// Tells the sink how many files of a tree image are done.
    pub fn files(&mut self, slot: &str, done: u64, total: u64) {
        self.sink.files(slot, done, total);
    }

    /// Passes the final numbers of an image on to the sink.
    pub fn counts(&mut self, slot: &str, counts: &[(&'static str, u64)]) {
        self.sink.counts(slot, counts);
    }

    /// Passes a handler's status message on to the sink.
    pub fn message(&mut self, text: &str) {
        self.sink.message(text);
    }

    /// Closes every open step as failed (the root last).
    pub fn fail_all(&mut self) {
        while !self.stack.is_empty() {
            self.end(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_slot_install_matches_rauc() {
        let mut seen: Vec<String> = Vec::new();
        let mut sink = |p: i32, m: &str, _d: i32| seen.push(format!("{p} {m}"));
        {
            let mut p = Progress::new(&mut sink);
            p.begin("Installing", 0, 10);
            p.begin("Determining slot states", 1, 0);
            p.end(true);
            p.begin("Checking bundle", 1, 1);
            p.begin("Verifying signature", 1, 0);
            p.end(true);
            p.end(true);
            p.begin("Checking manifest contents", 1, 0);
            p.end(true);
            p.begin("Determining target install group", 1, 0);
            p.end(true);
            p.begin("Updating slots", 6, 20);
            for slot in ["rootfs.1 (B)", "appfs.1"] {
                p.begin(&format!("Checking slot {slot}"), 1, 0);
                p.end(true);
                let name = slot.split(' ').next().unwrap();
                p.begin(&format!("Copying image to {name}"), 9, 0);
                for i in 1..=100 {
                    p.fraction(i as f64 / 100.0);
                }
                p.end(true);
            }
            p.end(true);
            p.end(true);
        }
        let key: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|l| {
                !l.contains("Copying image to") || l.ends_with("done.") || l.starts_with("43 ") || l.starts_with("73 ")
            })
            .collect();
        assert_eq!(
            key,
            [
                "0 Installing",
                "0 Determining slot states",
                "10 Determining slot states done.",
                "10 Checking bundle",
                "10 Verifying signature",
                "20 Verifying signature done.",
                "20 Checking bundle done.",
                "20 Checking manifest contents",
                "30 Checking manifest contents done.",
                "30 Determining target install group",
                "40 Determining target install group done.",
                "40 Updating slots",
                "40 Checking slot rootfs.1 (B)",
                "43 Checking slot rootfs.1 (B) done.",
                "43 Copying image to rootfs.1",
                "70 Copying image to rootfs.1 done.",
                "70 Checking slot appfs.1",
                "73 Checking slot appfs.1 done.",
                "73 Copying image to appfs.1",
                "99 Copying image to appfs.1 done.",
                "99 Updating slots done.",
                "100 Installing done.",
            ]
        );
        let copies: Vec<&String> =
            seen.iter().filter(|l| l.contains("Copying image to rootfs.1") && !l.ends_with("done.")).collect();
        assert_eq!(copies.first().unwrap().as_str(), "43 Copying image to rootfs.1");
        assert_eq!(copies.last().unwrap().as_str(), "69 Copying image to rootfs.1");
    }

    #[test]
    fn failure_ends_at_100() {
        let mut seen: Vec<String> = Vec::new();
        let mut sink = |p: i32, m: &str, _d: i32| seen.push(format!("{p} {m}"));
        {
            let mut p = Progress::new(&mut sink);
            p.begin("Installing", 0, 10);
            p.begin("Checking bundle", 1, 1);
            p.fail_all();
        }
        assert_eq!(seen, ["0 Installing", "0 Checking bundle", "0 Checking bundle failed.", "100 Installing failed."]);
    }
}
