//! `casync-rs`: casync's formats without the casync binary
//! (`spec/casync-format.md`), byte-compatible with casync: the
//! content-defined chunker ([`chunker`]), chunk IDs ([`digest`]), feature
//! flags ([`flags`]), `.caibx`/`.caidx` index files ([`index`]), `.catar`
//! archives ([`catar`]), chunk stores ([`store`]), seeds ([`seed`]), and
//! blobs and directory trees to and from a store ([`blob`], [`archive`]).
//! Remote stores plug in through [`store::ChunkSource`]. It depends on
//! nothing of rota.
#![deny(missing_docs)]

pub mod archive;
pub mod blob;
mod buzhash_table;
pub mod catar;
pub mod chunker;
pub mod digest;
pub mod flags;
pub mod index;
pub mod seed;
pub mod store;

/// Inputs of the spec's test vectors.
#[cfg(test)]
pub(crate) mod testdata {
    /// The spec's LCG(seed, n) (§12.1): the top byte of each new state.
    pub(crate) fn lcg(seed: u32, n: usize) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as u8
            })
            .collect()
    }
}
