//! The order in which RAUC visits slots. RAUC keeps the configured slots
//! in a GLib hash table keyed by name and walks that table wherever it
//! lists or numbers them: `status` in every format, `GetSlotStatus`, the
//! `RAUC_SLOT_*_<n>` numbers handlers and hooks see, the choice between
//! equally old target slots. Scripts written against RAUC rely on those
//! numbers, so rota reproduces the order: the walk of a GLib (2.60 and
//! later) table after inserting the names one by one — open addressing
//! over a power-of-two array, the first bucket `(hash * 11) mod p` for the
//! prime `p` below the size, quadratic probing, growth in place.

/// `g_str_hash`: djb2 over the bytes taken as signed chars.
fn str_hash(key: &str) -> u32 {
    key.bytes().fold(5381u32, |h, b| h.wrapping_mul(33).wrapping_add(b as i8 as i32 as u32))
}

/// GLib's prime modulus for each table shift.
const PRIME_MOD: [u32; 32] = [
    1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139, 524287,
    1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689, 268435399, 536870909, 1073741789,
    2147483647,
];

const MIN_SHIFT: u32 = 3;

/// The table: per bucket the stored hash (0 unused) and the insertion index.
struct Table {
    shift: u32,
    hashes: Vec<u32>,
    entries: Vec<usize>,
    nodes: usize,
}

impl Table {
    fn new() -> Table {
        let size = 1 << MIN_SHIFT;
        Table { shift: MIN_SHIFT, hashes: vec![0; size], entries: vec![0; size], nodes: 0 }
    }

    fn mask(&self) -> usize {
        (1 << self.shift) - 1
    }

    fn first_bucket(&self, hash: u32) -> usize {
        (hash.wrapping_mul(11) % PRIME_MOD[self.shift as usize]) as usize
    }

    /// Inserts entry `index` under `key` unless the key is there already.
    fn insert(&mut self, keys: &[&str], index: usize) {
        // Hashes 0 and 1 mark unused and removed buckets.
        let hash = str_hash(keys[index]).max(2);
        let mut bucket = self.first_bucket(hash);
        let mut step = 0;
        while self.hashes[bucket] != 0 {
            if self.hashes[bucket] == hash && keys[self.entries[bucket]] == keys[index] {
                return;
            }
            step += 1;
            bucket = (bucket + step) & self.mask();
        }
        self.hashes[bucket] = hash;
        self.entries[bucket] = index;
        self.nodes += 1;
        let size = self.hashes.len();
        if size <= self.nodes + self.nodes / 16 {
            self.grow();
        }
    }

    /// Resizes for `nodes * 1.333` and moves every entry to its bucket in
    /// the larger table in place, old buckets in order, an entry displaced
    /// by a move moving on next (GLib's eviction walk).
    fn grow(&mut self) {
        let old = self.hashes.len();
        let target = (self.nodes as f64 * 1.333) as usize;
        self.shift = (usize::BITS - target.leading_zeros()).max(MIN_SHIFT);
        let size = 1usize << self.shift;
        self.hashes.resize(size.max(old), 0);
        self.entries.resize(size.max(old), 0);
        let mut placed = vec![false; size.max(old)];
        for i in 0..old {
            if self.hashes[i] < 2 || placed[i] {
                continue;
            }
            let (mut hash, mut entry) = (self.hashes[i], self.entries[i]);
            self.hashes[i] = 0;
            loop {
                let mut bucket = self.first_bucket(hash);
                let mut step = 0;
                while placed[bucket] {
                    step += 1;
                    bucket = (bucket + step) & self.mask();
                }
                placed[bucket] = true;
                let displaced = (self.hashes[bucket], self.entries[bucket]);
                self.hashes[bucket] = hash;
                self.entries[bucket] = entry;
                if displaced.0 < 2 {
                    break;
                }
                (hash, entry) = displaced;
            }
        }
        self.hashes.truncate(size);
        self.entries.truncate(size);
    }
}

/// Indices into `keys` (inserted in that order) in the order a GLib hash
/// table keyed by them is walked; a repeated key keeps its first place.
pub fn table_order(keys: &[&str]) -> Vec<usize> {
    let mut t = Table::new();
    for i in 0..keys.len() {
        t.insert(keys, i);
    }
    t.hashes.iter().zip(&t.entries).filter(|(h, _)| **h >= 2).map(|(_, e)| *e).collect()
}

/// `keys` reordered as [`table_order`] walks them.
pub fn in_table_order<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    table_order(keys).into_iter().map(|i| keys[i]).collect()
}

/// The slot classes of root slots in the order RAUC lists them
/// (`r_slot_get_root_classes`): walking `roots` (root slots' classes in
/// table order), a class seen again is taken out — the last class listed
/// moving into its place — and appended anew.
pub fn root_classes<'a>(roots: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut classes: Vec<&str> = Vec::new();
    for class in roots {
        if let Some(at) = classes.iter().position(|c| *c == class) {
            classes.swap_remove(at);
        }
        classes.push(class);
    }
    classes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn orders_glib_produces() {
        // Walks of GLib 2.74's table, recorded with the referee below.
        let cases: [(&[&str], &[&str]); 3] = [
            (&["rootfs.0", "rootfs.1", "appfs.0", "appfs.1"], &["rootfs.1", "appfs.1", "rootfs.0", "appfs.0"]),
            (
                &["rootfs.0", "rootfs.1", "appfs.0", "appfs.1", "bootloader.0"],
                &["rootfs.1", "appfs.1", "bootloader.0", "rootfs.0", "appfs.0"],
            ),
            (
                &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"],
                &["b", "h", "a", "g", "f", "l", "e", "k", "d", "j", "c", "i"],
            ),
        ];
        for (keys, walked) in cases {
            assert_eq!(in_table_order(keys), walked, "{keys:?}");
        }
    }

    #[test]
    fn root_classes_as_rauc_lists_them() {
        assert_eq!(root_classes(["rootfs", "bootloader", "rootfs"]), ["bootloader", "rootfs"]);
        assert_eq!(root_classes(["rootfs", "rootfs"]), ["rootfs"]);
        assert_eq!(root_classes(["a", "b", "c", "a"]), ["c", "b", "a"]);
    }

    /// A C program on the system's GLib prints the walk of a table filled
    /// with its arguments.
    fn glib_referee(dir: &std::path::Path) -> std::path::PathBuf {
        let lib = ["/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0", "/usr/lib/aarch64-linux-gnu/libglib-2.0.so.0"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("GLib (installed with Debian's rauc) is the referee of the slot order");
        let src = dir.join("walk.c");
        std::fs::write(
            &src,
            "#include <stdio.h>\n\
             typedef struct { void *d[6]; } Iter;\n\
             extern void *g_hash_table_new(unsigned (*)(const void *), int (*)(const void *, const void *));\n\
             extern unsigned g_str_hash(const void *); extern int g_str_equal(const void *, const void *);\n\
             extern int g_hash_table_insert(void *, void *, void *);\n\
             extern void g_hash_table_iter_init(Iter *, void *); extern int g_hash_table_iter_next(Iter *, void **, void **);\n\
             int main(int argc, char **argv) {\n\
               void *t = g_hash_table_new(g_str_hash, g_str_equal); Iter it; void *k, *v;\n\
               for (int i = 1; i < argc; i++) g_hash_table_insert(t, argv[i], argv[i]);\n\
               g_hash_table_iter_init(&it, t);\n\
               while (g_hash_table_iter_next(&it, &k, &v)) printf(\"%s\\n\", (char *)k);\n\
               return 0; }\n",
        )
        .unwrap();
        let bin = dir.join("walk");
        let st = Command::new("cc").arg(&src).arg("-o").arg(&bin).arg(lib).status().expect("cc");
        assert!(st.success());
        bin
    }

    #[test]
    fn matches_the_systems_glib() {
        let dir = tempfile::tempdir().unwrap();
        let walk = glib_referee(dir.path());
        // Deterministic pseudo-random name sets of 1 to 60 slots, repeats
        // included, so that tables grow several times.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let classes = ["rootfs", "appfs", "boot", "data", "efi", "bootloader", "x"];
        for _ in 0..150 {
            let count = 1 + next(60) as usize;
            let names: Vec<String> =
                (0..count).map(|_| format!("{}.{}", classes[next(classes.len() as u64) as usize], next(25))).collect();
            let keys: Vec<&str> = names.iter().map(String::as_str).collect();
            let out = Command::new(&walk).args(&keys).output().unwrap();
            let theirs: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
            assert_eq!(in_table_order(&keys), theirs, "{keys:?}");
        }
    }
}
