//! A compact sorted set of account ids: the storage behind the paged listing's index.
//!
//! A `BTreeSet` of ids costs ~50 bytes per 12-byte id at a million ids (24-byte keys in nodes
//! that sequential inserts leave 6/11 full). [`IdSet`] packs the ids into pages instead: each
//! page holds up to [`PAGE`] ids one after the other in one `String`, with a `u32` end offset
//! per id, and the pages sit in a `BTreeMap` keyed by their first id. A 12-byte id then costs
//! its 12 bytes, 4 bytes of offset and its share of the page (issue 11).
//!
//! A page that overflows is split in two halves, except when the id went to its end: then the
//! new id starts a page of its own and the full page stays full, so ids inserted in order (the
//! common bulk load) fill their pages. A split page's buffers are shrunk to fit. A page left
//! with less than a quarter of [`PAGE`] ids by a removal takes in the next page when both fit
//! in one, so removals cannot leave the set sparse.
//!
//! Inserting or removing moves at most one page's bytes (a few hundred bytes to a few KiB):
//! O(log n + PAGE). Reading from a point costs O(log n) and then a walk.

use std::collections::BTreeMap;
use std::ops::Bound;

/// The most ids a page holds.
pub(super) const PAGE: usize = 64;

/// A sorted set of ids (byte order).
#[derive(Default)]
pub(super) struct IdSet {
    /// The pages, none empty, each keyed by its first id.
    pages: BTreeMap<Box<str>, Page>,
    len: usize,
}

/// Sorted ids, packed.
#[derive(Default)]
struct Page {
    /// The ids one after the other.
    text: String,
    /// Where each id ends in `text`.
    ends: Vec<u32>,
}

impl Page {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }

    fn get(&self, i: usize) -> &str {
        &self.text[self.start(i)..self.ends[i] as usize]
    }

    /// `Ok(i)` when `id` is the `i`-th id, `Err(i)` where it would go.
    fn search(&self, id: &str) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    fn insert_at(&mut self, i: usize, id: &str) {
        let at = self.start(i);
        self.text.insert_str(at, id);
        let n = offset(id.len());
        for end in &mut self.ends[i..] {
            *end += n;
        }
        self.ends.insert(i, offset(at) + n);
    }

    fn remove_at(&mut self, i: usize) {
        let (start, end) = (self.start(i), self.ends[i] as usize);
        self.text.replace_range(start..end, "");
        self.ends.remove(i);
        let n = offset(end - start);
        for end in &mut self.ends[i..] {
            *end -= n;
        }
    }

    /// The ids from the `i`-th on, moved to a new page.
    fn split_off(&mut self, i: usize) -> Page {
        let at = self.start(i);
        let text = self.text.split_off(at);
        let ends = self
            .ends
            .split_off(i)
            .iter()
            .map(|e| e - offset(at))
            .collect();
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        Page { text, ends }
    }

    /// After inserting at `i`: splits a page grown past [`PAGE`] (see the module docs).
    fn split_if_full(&mut self, i: usize) -> Option<Page> {
        if self.len() <= PAGE {
            return None;
        }
        let at = if i == self.len() - 1 {
            i
        } else {
            self.len() / 2
        };
        let mut tail = self.split_off(at);
        tail.text.shrink_to_fit();
        tail.ends.shrink_to_fit();
        Some(tail)
    }

    fn append(&mut self, other: Page) {
        let base = offset(self.text.len());
        self.text.push_str(&other.text);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }
}

/// A page offset (ids are far shorter than 4 GiB).
fn offset(n: usize) -> u32 {
    u32::try_from(n).expect("a page of ids under 4 GiB")
}

impl IdSet {
    /// How many ids the set holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds `id`; returns whether it was new.
    pub(super) fn insert(&mut self, id: &str) -> bool {
        let split = match self
            .pages
            .range_mut::<str, _>((Bound::Unbounded, Bound::Included(id)))
            .next_back()
        {
            Some((_, page)) => {
                let Err(i) = page.search(id) else {
                    return false;
                };
                page.insert_at(i, id);
                page.split_if_full(i)
            }
            None => {
                // Before every page's first id (or no page yet): the first page starts with it.
                let mut page = self.pages.pop_first().map(|(_, p)| p).unwrap_or_default();
                page.insert_at(0, id);
                let split = page.split_if_full(0);
                self.pages.insert(id.into(), page);
                split
            }
        };
        if let Some(page) = split {
            self.pages.insert(page.get(0).into(), page);
        }
        self.len += 1;
        true
    }

    /// Takes `id` out; returns whether it was there.
    pub(super) fn remove(&mut self, id: &str) -> bool {
        let Some((first, page)) = self
            .pages
            .range_mut::<str, _>((Bound::Unbounded, Bound::Included(id)))
            .next_back()
        else {
            return false;
        };
        let Ok(i) = page.search(id) else {
            return false;
        };
        page.remove_at(i);
        self.len -= 1;
        let (first, small) = (first.clone(), page.len() < PAGE / 4);
        if i == 0 || small {
            let mut page = self.pages.remove(&first).expect("the page just found");
            if small {
                let next = self
                    .pages
                    .range::<str, _>((Bound::Excluded(&*first), Bound::Unbounded))
                    .next()
                    .filter(|(_, next)| page.len() + next.len() <= PAGE)
                    .map(|(key, _)| key.clone());
                if let Some(next) = next {
                    page.append(self.pages.remove(&next).expect("the page just found"));
                }
            }
            if page.len() > 0 {
                self.pages.insert(page.get(0).into(), page);
            }
        }
        true
    }

    /// The ids after `lower` (all of them for `Bound::Unbounded`), in order.
    pub(super) fn after<'a>(&'a self, lower: Bound<&'a str>) -> impl Iterator<Item = &'a str> {
        // From the page that holds (or would hold) the bound on.
        let from = match lower {
            Bound::Unbounded => None,
            Bound::Included(id) | Bound::Excluded(id) => self
                .pages
                .range::<str, _>((Bound::Unbounded, Bound::Included(id)))
                .next_back()
                .map(|(first, _)| &**first),
        };
        let pages = match from {
            Some(first) => self
                .pages
                .range::<str, _>((Bound::Included(first), Bound::Unbounded)),
            None => self.pages.range::<str, _>(..),
        };
        pages
            .flat_map(|(_, page)| (0..page.len()).map(move |i| page.get(i)))
            .skip_while(move |id| match lower {
                Bound::Unbounded => false,
                Bound::Included(l) => *id < l,
                Bound::Excluded(l) => *id <= l,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::ops::Bound;

    use super::{IdSet, PAGE};

    /// Every page non-empty, at most `PAGE` ids, sorted, keyed by its first id; `len` right.
    fn check(set: &IdSet, model: &BTreeSet<String>) {
        let mut n = 0;
        for (first, page) in &set.pages {
            assert!(page.len() > 0 && page.len() <= PAGE);
            assert_eq!(&**first, page.get(0));
            n += page.len();
        }
        assert_eq!((n, set.len()), (model.len(), model.len()));
        let all: Vec<&str> = set.after(Bound::Unbounded).collect();
        let expected: Vec<&str> = model.iter().map(String::as_str).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn behaves_as_a_sorted_set_through_splits_merges_and_rekeys() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut set = IdSet::default();
        let mut model = BTreeSet::new();
        for round in 0..40 {
            // Alternate growing and shrinking phases, with ids of varied length and collisions.
            let grow = round % 4 != 3;
            for _ in 0..500 {
                let id = format!(
                    "{}{}",
                    ["", "a", "é", "zz", "B"][rng.usize(..5)],
                    rng.u32(..2000)
                );
                if grow || rng.bool() {
                    assert_eq!(set.insert(&id), model.insert(id.clone()), "{id}");
                } else {
                    assert_eq!(set.remove(&id), model.remove(&id), "{id}");
                }
            }
            check(&set, &model);
            for probe in ["", "a", "a1000", "é5", "zz", "zzz", "B19"] {
                for lower in [Bound::Included(probe), Bound::Excluded(probe)] {
                    let got: Vec<&str> = set.after(lower).take(70).collect();
                    let expected: Vec<&str> = model
                        .range::<str, _>((lower, Bound::Unbounded))
                        .take(70)
                        .map(String::as_str)
                        .collect();
                    assert_eq!(got, expected, "{lower:?}");
                }
            }
        }
        for id in model.clone() {
            assert!(set.remove(&id));
            model.remove(&id);
        }
        check(&set, &model);
        assert!(set.pages.is_empty());
    }

    #[test]
    fn ids_inserted_in_order_fill_their_pages() {
        let mut set = IdSet::default();
        for i in 0..10 * PAGE {
            set.insert(&format!("user-{i:07}"));
        }
        assert_eq!(set.pages.len(), 10);
        assert!(set.pages.values().all(|p| p.len() == PAGE));
    }
}
