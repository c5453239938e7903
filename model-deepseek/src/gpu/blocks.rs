//! Host-side bookkeeping of the paged KV cache: a pool of fixed-size blocks of cache rows, a
//! free list, and per sequence a block table that grows as tokens are appended. Knows nothing
//! of devices: [`super::GpuKvCache`] pairs it with the device arrays.

use crate::kv_cache::SeqId;
use std::collections::HashMap;
use thiserror::Error;

/// Tokens (cache rows) per block. 64 because: a sequence wastes at most 63 rows to rounding,
/// small next to one request; the attention kernel reads one table entry per 64 keys; block
/// tables stay short (a 163,840-token context is 2,560 entries); it is a power of two, so the
/// kernel maps a key to its row with a shift and a mask; and it is the block size DeepSeek's
/// FlashMLA decode kernel requires of its paged cache, so a kernel of that kind can read this
/// layout as it is.
pub const KV_BLOCK_TOKENS: usize = 64;

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(KV_BLOCK_TOKENS)
}

/// Why blocks could not be taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockError {
    /// The call needs more blocks than are free (nothing was taken).
    #[error(
        "KV cache out of blocks: the call needs {needed} more blocks of {KV_BLOCK_TOKENS} tokens \
         but only {free} of {total} are free"
    )]
    OutOfBlocks {
        /// Blocks the call needs beyond those its sequences hold.
        needed: usize,
        /// Free blocks.
        free: usize,
        /// Blocks in the pool.
        total: usize,
    },
}

/// One sequence's blocks, in token order, and how many tokens it has committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Table {
    blocks: Vec<u32>,
    len: usize,
}

/// The block pool of one cache.
#[derive(Debug, Clone)]
pub(crate) struct BlockAllocator {
    total: usize,
    /// Free blocks; taken from the end.
    free: Vec<u32>,
    tables: HashMap<SeqId, Table>,
}

impl BlockAllocator {
    /// A pool of `total` free blocks ([`super::MemoryPlan`] bounds a pool to 32-bit rows).
    pub fn new(total: usize) -> Self {
        let last = u32::try_from(total).expect("the memory plan bounds the pool to 32-bit rows");
        Self {
            total,
            // Reversed so blocks are handed out from 0 up: handy when reading a cache dump.
            free: (0..last).rev().collect(),
            tables: HashMap::new(),
        }
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Blocks not held by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.total - self.free.len()
    }

    /// Sequences held.
    pub fn num_sequences(&self) -> usize {
        self.tables.len()
    }

    /// Whether `seq` is held.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.tables.contains_key(&seq)
    }

    /// Tokens committed for `seq` (0 for a sequence not held).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map_or(0, |t| t.len)
    }

    /// `seq`'s blocks in token order (empty for a sequence not held).
    pub fn table(&self, seq: SeqId) -> &[u32] {
        self.tables.get(&seq).map_or(&[], |t| &t.blocks)
    }

    /// The cache row of `seq`'s token at `position`, if its blocks reach that far.
    pub fn row(&self, seq: SeqId, position: usize) -> Option<usize> {
        let block = *self.table(seq).get(position / KV_BLOCK_TOKENS)?;
        Some(block as usize * KV_BLOCK_TOKENS + position % KV_BLOCK_TOKENS)
    }

    /// Blocks that appending `appends` (sequence, new tokens) would take from the free list.
    /// A sequence named twice counts with its tokens summed.
    pub fn blocks_needed(&self, appends: &[(SeqId, usize)]) -> usize {
        growth(appends)
            .into_iter()
            .map(|(seq, tokens)| {
                blocks_for(self.seq_len(seq) + tokens).saturating_sub(self.table(seq).len())
            })
            .sum()
    }

    /// Gives every sequence of `appends` the blocks to hold its new tokens after those it has
    /// committed (a new sequence starts empty); all or nothing: when the free blocks do not
    /// suffice, nothing changes. Lengths move only with [`Self::commit`], so blocks taken
    /// for a call that then fails stay with their sequence and are reused by its next call.
    pub fn grow(&mut self, appends: &[(SeqId, usize)]) -> Result<(), BlockError> {
        let needed = self.blocks_needed(appends);
        if needed > self.free.len() {
            return Err(BlockError::OutOfBlocks {
                needed,
                free: self.free.len(),
                total: self.total,
            });
        }
        for (seq, tokens) in growth(appends) {
            let table = self.tables.entry(seq).or_default();
            while table.blocks.len() < blocks_for(table.len + tokens) {
                let block = self.free.pop().expect("free blocks were counted");
                table.blocks.push(block);
            }
        }
        Ok(())
    }

    /// Counts `tokens` more committed for `seq` (after its call ran); its blocks must hold them.
    pub fn commit(&mut self, seq: SeqId, tokens: usize) {
        if let Some(table) = self.tables.get_mut(&seq) {
            table.len += tokens;
            debug_assert!(table.len <= table.blocks.len() * KV_BLOCK_TOKENS);
        }
    }

    /// Drops `seq` and returns its blocks to the free list; `false` when it was not held.
    pub fn free(&mut self, seq: SeqId) -> bool {
        match self.tables.remove(&seq) {
            Some(table) => {
                self.free.extend(table.blocks.into_iter().rev());
                true
            }
            None => false,
        }
    }
}

/// New tokens per sequence, in order of first mention.
fn growth(appends: &[(SeqId, usize)]) -> Vec<(SeqId, usize)> {
    let mut out: Vec<(SeqId, usize)> = Vec::with_capacity(appends.len());
    for &(seq, tokens) in appends {
        match out.iter_mut().find(|(s, _)| *s == seq) {
            Some((_, n)) => *n += tokens,
            None => out.push((seq, tokens)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// The allocator's whole state, to show a refused call changed nothing.
    fn snapshot(a: &BlockAllocator) -> (Vec<u32>, Vec<(SeqId, Table)>) {
        let mut tables: Vec<_> = a.tables.iter().map(|(s, t)| (*s, t.clone())).collect();
        tables.sort_by_key(|(s, _)| *s);
        (a.free.clone(), tables)
    }

    /// Every block is free or owned by exactly one sequence; every sequence holds exactly the
    /// blocks its expected length needs, and rows map inside its own blocks.
    fn check_invariants(a: &BlockAllocator, expected: &HashMap<SeqId, usize>) {
        let mut seen = HashSet::new();
        for &b in &a.free {
            assert!((b as usize) < a.total, "free block {b} out of range");
            assert!(seen.insert(b), "block {b} twice in the free list");
        }
        assert_eq!(a.tables.len(), expected.len(), "sequences held");
        for (seq, &len) in expected {
            assert_eq!(a.seq_len(*seq), len, "{seq} length");
            let table = a.table(*seq);
            assert_eq!(
                table.len(),
                blocks_for(len),
                "{seq} holds exactly what it needs"
            );
            for &b in table {
                assert!((b as usize) < a.total, "block {b} out of range");
                assert!(seen.insert(b), "block {b} owned twice");
            }
            for p in 0..len {
                let row = a.row(*seq, p).expect("every committed position has a row");
                assert_eq!(row / KV_BLOCK_TOKENS, table[p / KV_BLOCK_TOKENS] as usize);
            }
        }
        assert_eq!(seen.len(), a.total, "no block leaked");
        assert_eq!(a.free_blocks() + a.used_blocks(), a.total_blocks());
    }

    #[test]
    fn random_appends_and_frees_match_a_simple_model() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let total = rng.random_range(1..40);
            let mut a = BlockAllocator::new(total);
            let mut expected: HashMap<SeqId, usize> = HashMap::new();
            let (mut refused, mut granted) = (0, 0);
            for _ in 0..400 {
                if rng.random_bool(0.25) {
                    let seq = SeqId(rng.random_range(0..8));
                    assert_eq!(a.free(seq), expected.remove(&seq).is_some());
                } else {
                    // A forward call: a few distinct sequences, each with some new tokens.
                    let mut appends = Vec::new();
                    for _ in 0..rng.random_range(1..4) {
                        let seq = SeqId(rng.random_range(0..8));
                        if appends.iter().all(|(s, _)| *s != seq) {
                            appends.push((seq, rng.random_range(1..150)));
                        }
                    }
                    let need: usize = appends
                        .iter()
                        .map(|(s, n)| {
                            let len = expected.get(s).copied().unwrap_or(0);
                            blocks_for(len + n) - blocks_for(len)
                        })
                        .sum();
                    assert_eq!(a.blocks_needed(&appends), need);
                    let before = snapshot(&a);
                    match a.grow(&appends) {
                        Ok(()) => {
                            assert!(need <= before.0.len());
                            granted += 1;
                            for &(seq, n) in &appends {
                                a.commit(seq, n);
                                *expected.entry(seq).or_default() += n;
                            }
                        }
                        Err(e) => {
                            refused += 1;
                            assert_eq!(
                                e,
                                BlockError::OutOfBlocks {
                                    needed: need,
                                    free: before.0.len(),
                                    total
                                }
                            );
                            assert_eq!(snapshot(&a), before, "a refused call changed the pool");
                        }
                    }
                }
                check_invariants(&a, &expected);
            }
            assert!(
                granted > 0 && refused > 0,
                "seed {seed}: both paths exercised"
            );
            for seq in expected.keys() {
                assert!(a.free(*seq));
            }
            assert_eq!(a.free_blocks(), total, "everything returns to the pool");
        }
    }

    #[test]
    fn a_sequence_named_twice_in_one_call_gets_blocks_for_both_appends() {
        let mut a = BlockAllocator::new(4);
        let s = SeqId(1);
        assert_eq!(a.blocks_needed(&[(s, 40), (s, 40)]), 2);
        a.grow(&[(s, 40), (s, 40)]).unwrap();
        a.commit(s, 80);
        assert_eq!(a.table(s).len(), 2);
        assert_eq!(a.free_blocks(), 2);
    }

    #[test]
    fn blocks_of_a_call_that_never_committed_are_reused_by_the_next() {
        let mut a = BlockAllocator::new(3);
        let s = SeqId(5);
        a.grow(&[(s, 100)]).unwrap();
        // The forward pass failed: nothing committed; the blocks stay with the sequence.
        assert_eq!((a.seq_len(s), a.table(s).len()), (0, 2));
        assert_eq!(a.blocks_needed(&[(s, 100)]), 0);
        a.grow(&[(s, 100)]).unwrap();
        a.commit(s, 100);
        assert_eq!(
            (a.seq_len(s), a.table(s).len(), a.free_blocks()),
            (100, 2, 1)
        );
    }

    #[test]
    fn freed_blocks_are_reused_and_tables_fragment() {
        let mut a = BlockAllocator::new(6);
        let (x, y, z) = (SeqId(1), SeqId(2), SeqId(3));
        for s in [x, y, z] {
            a.grow(&[(s, KV_BLOCK_TOKENS)]).unwrap();
            a.commit(s, KV_BLOCK_TOKENS);
        }
        assert!(a.free(y));
        assert!(!a.free(y));
        // z grows into y's old block and then a fresh one: its table is not contiguous.
        a.grow(&[(z, 2 * KV_BLOCK_TOKENS)]).unwrap();
        a.commit(z, 2 * KV_BLOCK_TOKENS);
        let table = a.table(z).to_vec();
        assert_eq!(table.len(), 3);
        assert!(table.windows(2).any(|w| w[1] != w[0] + 1), "{table:?}");
        assert_eq!(
            a.row(z, KV_BLOCK_TOKENS + 3),
            Some(table[1] as usize * KV_BLOCK_TOKENS + 3)
        );
        assert_eq!(a.row(z, 3 * KV_BLOCK_TOKENS), None);
    }
}
