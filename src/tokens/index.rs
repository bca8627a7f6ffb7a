//! The sorted index of account ids behind paged listings ([`Tokens::list_page`]).
//!
//! The account maps are hash maps: fast for the request path, but unordered, so listing them in
//! order means a scan and a sort of every account. Beside each provider's map, [`Index`] keeps
//! the ids sorted in an [`IdSet`] (packed pages of ids: ~20 bytes per 12-byte id, where a
//! `BTreeSet` took ~50), so one page of `limit` ids after a cursor costs O(log n + limit).
//!
//! # Consistency
//!
//! The index changes only while the map's entry guard for that id is held: an insert adds the id
//! before the new entry's guard is released, a removal takes the id out while the entry is
//! still locked (see [`remove`]). Lock order is always *map entry guard, then index*; readers
//! take the index lock alone and release it before looking entries up, and no index lock is
//! ever held across an `.await`. So the index holds exactly the ids of the map whenever no
//! insert or removal is half-way, and a page never waits on a proxied request.
//!
//! [`Tokens::list_page`]: super::Tokens::list_page

use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use crate::provider::Provider;

use super::id_set::IdSet;
use super::table::Table;
use super::{idx, AccountInfo, Tokens};

/// One provider's ids, in byte order.
type Ids = RwLock<IdSet>;

/// The ids of every account, per provider, sorted.
#[derive(Default)]
pub(super) struct Index {
    ids: [Ids; 2],
}

/// The ids of one page: at most `limit` (provider, id) pairs in order, and whether more remain
/// after the last of them.
pub(crate) struct IdPage {
    /// The ids, sorted by provider, then id.
    pub(crate) ids: Vec<(Provider, Arc<str>)>,
    /// Whether an account follows the last id (or, for an empty page, the cursor).
    pub(crate) more: bool,
}

impl Index {
    fn set(&self, provider: Provider) -> &Ids {
        &self.ids[idx(provider)]
    }

    /// Adds `id`; call while holding the map's entry guard for it.
    pub(super) fn insert(&self, provider: Provider, id: &str) {
        self.set(provider)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
    }

    /// Takes `id` out; call while holding the map's entry guard for it.
    fn remove(&self, provider: Provider, id: &str) {
        self.set(provider)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// How many ids the index holds for `provider`.
    #[cfg(test)]
    pub(super) fn len(&self, provider: Provider) -> usize {
        self.set(provider)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// At most `limit` ids sorted by (provider, id), strictly after `after` (from the first
    /// account when `None`), and whether more remain. Each provider's lock is held only while
    /// its part of the page is copied.
    pub(crate) fn page(&self, after: Option<(Provider, &str)>, limit: usize) -> IdPage {
        let mut ids = Vec::with_capacity(limit.min(1024));
        for provider in Provider::ALL {
            let lower = match after {
                Some((p, _)) if provider < p => continue,
                Some((p, id)) if provider == p => Bound::Excluded(id),
                _ => Bound::Unbounded,
            };
            let set = self
                .set(provider)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for id in set.after(lower) {
                if ids.len() == limit {
                    return IdPage { ids, more: true };
                }
                ids.push((provider, Arc::from(id)));
            }
        }
        IdPage { ids, more: false }
    }
}

/// Removes `account` from `map` and `index` together, under the map's entry guard (so a
/// concurrent insert of the same id cannot slip between the two). Returns whether it existed.
pub(super) fn remove(map: &Table, index: &Index, provider: Provider, account: &str) -> bool {
    // `remove_with` runs its closure with the shard's write lock held.
    map.remove_with(account, |e| index.remove(provider, e.id.as_str()))
}

/// One page of the account listing ([`Tokens::list_page`]).
///
/// ```
/// # use oauth_refresh_proxy::{AccountPage, BackendRefresher, Tokens};
/// # let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
/// let page: AccountPage = tokens.list_page(None, 10);
/// assert!(page.entries.is_empty() && page.next.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountPage {
    /// At most `limit` accounts, sorted by provider (Google, then GitHub), then account id
    /// (byte order).
    pub entries: Vec<AccountInfo>,
    /// When more accounts remain: the cursor of the next page (the `after` to pass), which is
    /// the last id this page covered.
    pub next: Option<(Provider, String)>,
}

impl Tokens {
    /// One page of the listing: at most `limit` accounts sorted by (provider, account),
    /// strictly after `after` (from the first account when `None`; `after` need not be an
    /// existing account), and the cursor of the next page when more remain. A `limit` of 0 is
    /// taken as 1, so that following the cursor always moves on.
    ///
    /// A page costs O(log n + limit), whatever the number of accounts: the ids come from a
    /// sorted index kept beside the account maps. Following [`AccountPage::next`] from `None`
    /// visits every account that exists throughout, once, in order; accounts added or removed
    /// meanwhile may or may not show. An account removed between the id lookup and the read of
    /// its entry is left out, so a page may hold fewer than `limit` entries and still have a
    /// `next`.
    ///
    /// ```
    /// use oauth_refresh_proxy::{BackendRefresher, Provider, TokenSeed, Tokens};
    ///
    /// let tokens = Tokens::builder(BackendRefresher::new("http://127.0.0.1:9").unwrap()).build();
    /// for id in ["carol", "alice", "bob"] {
    ///     tokens.insert(Provider::GitHub, id, TokenSeed::new("ghr_x"));
    /// }
    /// tokens.insert(Provider::Google, "zed", TokenSeed::new("1//x"));
    ///
    /// let first = tokens.list_page(None, 2);
    /// let ids: Vec<_> = first.entries.iter().map(|a| (a.provider, a.account.as_str())).collect();
    /// assert_eq!(ids, [(Provider::Google, "zed"), (Provider::GitHub, "alice")]);
    /// let (provider, after) = first.next.unwrap();
    ///
    /// let second = tokens.list_page(Some((provider, &after)), 2);
    /// let ids: Vec<_> = second.entries.iter().map(|a| a.account.as_str()).collect();
    /// assert_eq!(ids, ["bob", "carol"]);
    /// assert_eq!(second.next, None);
    /// ```
    pub fn list_page(&self, after: Option<(Provider, &str)>, limit: usize) -> AccountPage {
        let page = self.page_ids(after, limit.max(1));
        let next = match (page.more, page.ids.last()) {
            (true, Some((p, id))) => Some((*p, id.to_string())),
            _ => None,
        };
        let entries = page
            .ids
            .iter()
            .filter_map(|(p, id)| self.get(*p, id))
            .collect();
        AccountPage { entries, next }
    }

    /// The ids of one page (see [`Tokens::list_page`]), without reading the entries: for
    /// listings that look entries up lazily, a chunk at a time.
    pub(crate) fn page_ids(&self, after: Option<(Provider, &str)>, limit: usize) -> IdPage {
        self.inner.index.page(after, limit)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::provider::Provider::{self, GitHub, Google};
    use crate::refresh::scripted::{Script, Scripted};
    use crate::refresh::Refreshed;
    use crate::token::{Secret, TokenSeed};
    use crate::tokens::store::{StoreUpdate, StoredAccount};
    use crate::tokens::{idx, Tokens};

    fn tokens() -> Tokens {
        let script = Script::new(Refreshed {
            access_token: Secret::new("a"),
            refresh_token: None,
            expires_at: None,
        });
        Tokens::builder(Scripted(script)).build()
    }

    fn ids(page: &super::AccountPage) -> Vec<(Provider, &str)> {
        page.entries
            .iter()
            .map(|a| (a.provider, a.account.as_str()))
            .collect()
    }

    /// The index's ids and the map's keys, per provider, as sorted sets.
    fn both(t: &Tokens, p: Provider) -> (BTreeSet<String>, BTreeSet<String>) {
        let map = t.inner.maps[idx(p)].ids().into_iter().collect();
        let index = t
            .page_ids(Some((p, "")), usize::MAX)
            .ids
            .into_iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, id)| id.to_string())
            .collect();
        (map, index)
    }

    #[test]
    fn pages_are_sorted_by_provider_then_bytes() {
        let t = tokens();
        // Inserted out of order; "B" < "a" < "a0" < "aa" < "é" in byte order.
        for id in ["é", "aa", "B", "a0", "a"] {
            t.insert(GitHub, id, TokenSeed::new("r"));
            t.insert(Google, id, TokenSeed::new("r"));
        }
        let all = t.list_page(None, 100);
        let order = ["B", "a", "a0", "aa", "é"];
        let expected: Vec<_> = [Google, GitHub]
            .iter()
            .flat_map(|p| order.iter().map(move |id| (*p, *id)))
            .collect();
        assert_eq!(ids(&all), expected);
        assert_eq!(all.next, None);
        assert_eq!(
            t.list()
                .iter()
                .map(|a| (a.provider, a.account.as_str()))
                .collect::<Vec<_>>(),
            expected
        );

        // Walking with limit 1..=11 visits the same sequence, each page at most `limit`.
        for limit in 1..=11 {
            let mut seen = Vec::new();
            let mut after: Option<(Provider, String)> = None;
            loop {
                let page = t.list_page(after.as_ref().map(|(p, a)| (*p, a.as_str())), limit);
                assert!(page.entries.len() <= limit);
                seen.extend(page.entries.iter().map(|a| (a.provider, a.account.clone())));
                match page.next {
                    Some(next) => {
                        assert_eq!(Some(&next), seen.last(), "next is the last id of the page");
                        after = Some(next);
                    }
                    None => break,
                }
            }
            let seen: Vec<_> = seen.iter().map(|(p, a)| (*p, a.as_str())).collect();
            assert_eq!(seen, expected, "limit {limit}");
        }
    }

    #[test]
    fn after_boundaries() {
        let t = tokens();
        for id in ["a", "b", "c"] {
            t.insert(Google, id, TokenSeed::new("r"));
        }
        t.insert(GitHub, "m", TokenSeed::new("r"));
        // Strictly after an existing id.
        assert_eq!(
            ids(&t.list_page(Some((Google, "a")), 10)),
            [(Google, "b"), (Google, "c"), (GitHub, "m")]
        );
        // After an id that does not exist: from the next one in order.
        assert_eq!(
            ids(&t.list_page(Some((Google, "bb")), 10)),
            [(Google, "c"), (GitHub, "m")]
        );
        assert_eq!(ids(&t.list_page(Some((Google, "")), 1)), [(Google, "a")]);
        // After the last Google account: the GitHub ones.
        let p = t.list_page(Some((Google, "c")), 1);
        assert_eq!((ids(&p), p.next.clone()), (vec![(GitHub, "m")], None));
        // A full page exactly at the end has no next.
        let p = t.list_page(Some((Google, "a")), 3);
        assert_eq!(p.entries.len(), 3);
        assert_eq!(p.next, None);
        // A full page with more after it, across the provider boundary.
        let p = t.list_page(Some((Google, "a")), 2);
        assert_eq!(p.next, Some((Google, "c".to_string())));
        let p = t.list_page(None, 3);
        assert_eq!(p.next, Some((Google, "c".to_string())));
        // After the very last account, and past it.
        for after in [(GitHub, "m"), (GitHub, "zzz")] {
            let p = t.list_page(Some(after), 10);
            assert!(p.entries.is_empty(), "{after:?}");
            assert_eq!(p.next, None);
        }
        // Limit 0 is taken as 1.
        let p = t.list_page(None, 0);
        assert_eq!(
            (ids(&p), p.next.clone()),
            (vec![(Google, "a")], Some((Google, "a".into())))
        );
        // An empty cache.
        let p = tokens().list_page(None, 5);
        assert!(p.entries.is_empty() && p.next.is_none());
    }

    #[test]
    fn removal_and_remote_updates_keep_the_index() {
        let t = tokens();
        for id in ["a", "b", "c"] {
            t.insert(GitHub, id, TokenSeed::new("r"));
        }
        // Replacing an account keeps one id.
        assert!(t.insert(GitHub, "b", TokenSeed::new("r2")));
        assert_eq!(t.inner.index.len(GitHub), 3);
        assert!(t.remove(GitHub, "b"));
        assert!(!t.remove(GitHub, "b"));
        assert!(!t.remove(Google, "a"), "same id, other provider");
        assert_eq!(ids(&t.list_page(None, 10)), [(GitHub, "a"), (GitHub, "c")]);
        assert_eq!(t.inner.index.len(GitHub), 2);

        // Changes announced by a shared store: a new account, then its removal.
        t.apply_update(StoreUpdate::Changed(StoredAccount {
            provider: Google,
            account: "remote".into(),
            refresh_token: Secret::new("r"),
            access_token: None,
            expires_at: None,
            generation: 4,
            needs_reauth: false,
            last_refresh_at: None,
            last_error: None,
            seed_fingerprint: None,
        }));
        assert_eq!(ids(&t.list_page(None, 1)), [(Google, "remote")]);
        t.apply_update(StoreUpdate::Removed {
            provider: Google,
            account: "remote".into(),
        });
        assert_eq!(t.inner.index.len(Google), 0);
        assert_eq!(ids(&t.list_page(None, 10)), [(GitHub, "a"), (GitHub, "c")]);
        for p in Provider::ALL {
            let (map, index) = both(&t, p);
            assert_eq!(map, index);
        }
    }

    #[tokio::test]
    async fn restore_fills_the_index() {
        let t = tokens();
        let seeds = (0..500).map(|i| (GitHub, format!("acct-{i:04}"), TokenSeed::new("r")));
        t.restore(seeds).await.unwrap();
        let page = t.list_page(Some((GitHub, "acct-0249")), 1000);
        assert_eq!(page.entries.len(), 250);
        assert_eq!(page.entries[0].account, "acct-0250");
        assert_eq!(t.inner.index.len(GitHub), 500);
    }

    /// Rounds of eight threads inserting and removing the same few ids at random (so one id is
    /// inserted and removed at the same time), while two threads page through; after every
    /// round the index holds exactly the map's ids, and every page seen was sorted and within
    /// its limit.
    #[test]
    fn index_matches_the_map_under_concurrent_inserts_and_removes() {
        const WRITERS: usize = 8;
        const ROUNDS: usize = 1500;
        let t = tokens();
        let ids: Vec<String> = (0..6).map(|i| format!("id{i}")).collect();
        let barrier = std::sync::Barrier::new(WRITERS + 1);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (t, ids, barrier) = (&t, &ids, &barrier);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(w as u64);
                    for _ in 0..ROUNDS {
                        barrier.wait(); // round starts
                        for _ in 0..4 {
                            let id = &ids[rng.usize(..ids.len())];
                            let p = if rng.bool() { Google } else { GitHub };
                            if rng.bool() {
                                t.insert(p, id.as_str(), TokenSeed::new("r"));
                            } else {
                                t.remove(p, id);
                            }
                        }
                        barrier.wait(); // round done
                    }
                });
            }
            let mut readers = Vec::new();
            for _ in 0..2 {
                let (t, stop) = (&t, &stop);
                readers.push(s.spawn(move || {
                    let mut pages = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let page = t.page_ids(None, 5);
                        assert!(page.ids.len() <= 5);
                        assert!(page.ids.windows(2).all(|w| w[0] < w[1]), "sorted");
                        pages += 1;
                    }
                    pages
                }));
            }
            // A mismatch is recorded, not asserted at once: the writers wait at the barrier.
            let mut mismatch = None;
            for round in 0..ROUNDS {
                barrier.wait();
                barrier.wait();
                for p in Provider::ALL {
                    let (map, index) = both(&t, p);
                    if map != index && mismatch.is_none() {
                        mismatch =
                            Some(format!("{p}, round {round}: map {map:?}, index {index:?}"));
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for r in readers {
                assert!(r.join().unwrap() > 0);
            }
            assert_eq!(mismatch, None);
        });
    }
}
