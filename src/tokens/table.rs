//! One provider's accounts: a sharded hash set of boxed entries, each entry holding its id.
//!
//! A `DashMap<Id, Box<Entry>>` keeps the key beside the pointer, so its tables hold 32-byte
//! slots — at a million accounts, with the tables at a load of ~0.48, 69 bytes per account.
//! Here the id lives in the entry ([`Entry::id`]) and each shard is a `HashSet<Box<Entry>>`
//! searched by the id's bytes: 8-byte slots, ~19 bytes per account (issue 11).
//!
//! Reading takes the shard's read lock and hands out `&Entry` ([`Table::read`], then
//! [`Shard::get`]). Writing takes the shard's write lock and *takes the entry out* of the set
//! ([`EntryMut`]): the standard set gives no `&mut` to its elements; the entry goes back in
//! when the guard drops (an unwinding panic included), and nobody can see the set without it
//! meanwhile, since the write lock is held throughout. Writes (refreshes, replacements) are
//! rare; the request path only reads.
//!
//! Every write bumps the table's *epoch* ([`Table::epoch`]) before its lock is released: a
//! reader that memoised what it read (the layer's lease memo, see `lease`) knows it is still
//! what the table holds as long as the epoch has not moved.
//!
//! The shards' locks are dashmap's `RwLock` (as in the `DashMap` this replaced): with std's,
//! the request path measured 4–6% slower for the same instruction count (BENCHMARKS.md
//! section 5).

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::entry::Entry;
use super::id::Id;

type Hasher = foldhash::fast::RandomState;
type Set = HashSet<Box<Entry>, Hasher>;

/// The accounts of one provider.
pub(super) struct Table {
    /// A power of two of them.
    shards: Box<[RwLock<Set>]>,
    /// This table's seed for picking shards.
    seed: u64,
    /// Bumped by every write (see the module docs).
    epoch: AtomicU64,
}

/// A shard, read-locked.
pub(super) struct Shard<'a>(RwLockReadGuard<'a, Set>);

impl Shard<'_> {
    /// The entry of `id`, if this shard holds it.
    pub(super) fn get(&self, id: &str) -> Option<&Entry> {
        self.0.get(id.as_bytes()).map(|e| &**e)
    }
}

/// An entry taken out of its shard for writing; put back on drop, and the table's epoch
/// bumped.
pub(super) struct EntryMut<'a> {
    shard: RwLockWriteGuard<'a, Set>,
    entry: Option<Box<Entry>>,
    epoch: &'a AtomicU64,
}

impl Deref for EntryMut<'_> {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        self.entry.as_deref().expect("held until dropped")
    }
}

impl DerefMut for EntryMut<'_> {
    fn deref_mut(&mut self) -> &mut Entry {
        self.entry.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for EntryMut<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.shard.insert(entry);
        }
        // Still under the shard's write lock (the guard drops after this).
        self.epoch.fetch_add(1, Ordering::Release);
    }
}

impl Default for Table {
    /// As many shards as `DashMap` would take: four per core, rounded up to a power of two.
    fn default() -> Table {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = (cores * 4).next_power_of_two();
        Table {
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            seed: Hasher::default().hash_one(0u8),
            epoch: AtomicU64::new(0),
        }
    }
}

impl Table {
    /// The shard of `id`, picked by a cheap seeded mix of its length and its first and last 8
    /// bytes: it only spreads the ids over the shards' locks (the sets hash the whole id with
    /// their own seeded hasher), and hashing the id twice in full cost the request path ~40
    /// instructions.
    fn shard(&self, id: &str) -> &RwLock<Set> {
        let b = id.as_bytes();
        let x = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
            (Some(first), Some(last)) => {
                u64::from_le_bytes(*first) ^ u64::from_le_bytes(*last).rotate_left(29)
            }
            _ => b.iter().fold(0, |x, &c| x << 8 | u64::from(c)),
        };
        let x = (x ^ b.len() as u64 ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[(x >> 32) as usize & (self.shards.len() - 1)]
    }

    /// The table's epoch: it moves whenever an entry may have changed (after the change is
    /// visible to readers that load it first and then look up).
    #[inline]
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Read-locks the shard that holds (or would hold) `id`.
    pub(super) fn read(&self, id: &str) -> Shard<'_> {
        Shard(self.shard(id).read())
    }

    /// The entry of `id` for writing, under its shard's write lock.
    pub(super) fn get_mut(&self, id: &str) -> Option<EntryMut<'_>> {
        let mut shard = self.shard(id).write();
        let entry = shard.take(id.as_bytes())?;
        Some(EntryMut {
            shard,
            entry: Some(entry),
            epoch: &self.epoch,
        })
    }

    /// The entry of `id` for writing, made by `make` when there is none; and whether it
    /// existed.
    pub(super) fn get_or_insert_with(
        &self,
        id: Id,
        make: impl FnOnce(Id) -> Entry,
    ) -> (EntryMut<'_>, bool) {
        let mut shard = self.shard(id.as_str()).write();
        let (entry, existed) = match shard.take(id.as_bytes()) {
            Some(entry) => (entry, true),
            None => (Box::new(make(id)), false),
        };
        let entry = Some(entry);
        let epoch = &self.epoch;
        (
            EntryMut {
                shard,
                entry,
                epoch,
            },
            existed,
        )
    }

    /// Removes the entry of `id`, calling `then` with it under the shard's write lock. Returns
    /// whether it existed.
    pub(super) fn remove_with(&self, id: &str, then: impl FnOnce(&Entry)) -> bool {
        let mut shard = self.shard(id).write();
        match shard.take(id.as_bytes()) {
            Some(entry) => {
                then(&entry);
                self.epoch.fetch_add(1, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// How many accounts the table holds.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Every id (for tests).
    #[cfg(test)]
    pub(super) fn ids(&self) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|s| {
                let set = s.read();
                set.iter()
                    .map(|e| e.id.as_str().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Table;
    use crate::tokens::entry::Entry;
    use crate::tokens::id::Id;

    fn entry(id: Id) -> Entry {
        Entry::for_tests(id)
    }

    #[test]
    fn written_entries_go_back_and_removals_see_them() {
        let t = Table::default();
        for i in 0..1000 {
            let (mut e, existed) = t.get_or_insert_with(Id::from(format!("a{i}").as_str()), entry);
            assert!(!existed);
            e.generation = i;
        }
        let (e, existed) = t.get_or_insert_with(Id::from("a7"), entry);
        assert!(existed && e.generation == 7);
        drop(e);
        assert_eq!(t.len(), 1000);
        t.get_mut("a9").unwrap().generation = 90;
        assert_eq!(t.read("a9").get("a9").map(|e| e.generation), Some(90));
        assert!(t.get_mut("b").is_none() && t.read("b").get("b").is_none());
        // A panic while an entry is out for writing puts it back.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _e = t.get_mut("a3").unwrap();
            panic!("while writing");
        }));
        assert!(caught.is_err());
        assert_eq!(t.read("a3").get("a3").map(|e| e.generation), Some(3));
        let mut seen = None;
        assert!(t.remove_with("a5", |e| seen = Some(e.generation)));
        assert!(!t.remove_with("a5", |_| unreachable!()));
        assert_eq!((seen, t.len()), (Some(5), 999));
        // Every write moved the epoch; reads and a removal of nothing did not.
        let epoch = t.epoch();
        let _ = t.read("a1").get("a1").map(|e| e.generation);
        assert!(!t.remove_with("zz", |_| ()));
        assert_eq!(t.epoch(), epoch);
        drop(t.get_mut("a1"));
        assert_eq!(t.epoch(), epoch + 1);
        drop(t.get_or_insert_with(Id::from("new"), entry));
        assert_eq!(t.epoch(), epoch + 2);
        assert!(t.remove_with("new", |_| ()));
        assert_eq!(t.epoch(), epoch + 3);
        assert_eq!(t.ids().len(), 999);
    }

    #[test]
    fn ids_spread_over_the_shards() {
        let t = Table::default();
        let mut counts = vec![0usize; t.shards.len()];
        for i in 0..4000 {
            for id in [
                format!("user-{i:07}"),
                format!("{i}@example.com"),
                i.to_string(),
            ] {
                let shard = t.shard(&id) as *const _;
                let at = t
                    .shards
                    .iter()
                    .position(|s| std::ptr::eq(s, shard))
                    .unwrap();
                counts[at] += 1;
            }
        }
        let even = 12_000 / counts.len();
        assert!(
            counts.iter().all(|&c| c > even / 2 && c < even * 2),
            "{counts:?}"
        );
        assert!(t.read("").get("").is_none());
    }
}
