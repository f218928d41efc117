//! Generated root file systems for benchmarks (the test kit's generator on
//! the command line):
//! `rota-rootfs generate DIR FILES MEAN_BYTES SEED` and
//! `rota-rootfs change DIR PERCENT SEED` (prints files and bytes with new content),
//! `rota-rootfs compare DIR DIR` (same entries, contents and metadata;
//! a root-level `lost+found` left out; exit 1 and the first difference otherwise).

use std::path::Path;

fn usage() -> ! {
    eprintln!("usage: rota-rootfs generate DIR FILES MEAN SEED | change DIR PERCENT SEED | compare DIR DIR");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage()) };
    match args.get(1).map(String::as_str) {
        Some("generate") => testkit::rootfs::generate(Path::new(&args[2]), num(3) as usize, num(4) as usize, num(5)),
        Some("change") => {
            let c = testkit::rootfs::change(Path::new(&args[2]), num(3) as usize, num(4));
            println!("{} {}", c.new_content.len(), c.bytes);
        }
        Some("compare") if args.len() == 4 => {
            let scan = |d: &str| {
                let mut i = rota_bundle::tree::FileIndex::scan(Path::new(d)).unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(2)
                });
                i.entries.retain(|e| !e.path.starts_with(b"lost+found"));
                i.entries
            };
            let (a, b) = (scan(&args[2]), scan(&args[3]));
            if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
                eprintln!("differ:\n  {x:?}\n  {y:?}");
                std::process::exit(1);
            }
            if a.len() != b.len() {
                eprintln!("differ: {} entries against {}", a.len(), b.len());
                std::process::exit(1);
            }
        }
        _ => usage(),
    }
}
