//! One detached single flight: the first caller for a key starts the work in a task of its own,
//! every later caller for that key waits on the same result, and a caller that gives up never
//! cancels the work for the others.
//!
//! Two shapes share the one channel:
//!
//! * [`channel`] — a [`Flight`] the owner of the key keeps itself. [`Tokens`](crate::Tokens)
//!   registers it in the account's cache entry, under the entry's lock, because whether to start
//!   a refresh depends on the entry's generation and cooldown.
//! * [`Flights`] — a keyed registry for work whose key is all there is to it (the served
//!   refresh API coalesces by provider and refresh-token fingerprint).
//!
//! A [`Publisher`] may publish more than once: an early answer releases the callers waiting now
//! (a refresh attempt that timed out after sending) while the task goes on, and its final answer
//! replaces it for the callers that come later.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

/// The waiting side of a flight: clone it for every caller.
pub(crate) struct Flight<T>(watch::Receiver<Option<T>>);

impl<T> Clone for Flight<T> {
    fn clone(&self) -> Self {
        Flight(self.0.clone())
    }
}

/// The publishing side of a flight, held by the task doing the work.
pub(crate) struct Publisher<T>(Arc<watch::Sender<Option<T>>>);

impl<T> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher(self.0.clone())
    }
}

/// A new flight: publish on the first half, wait on (clones of) the second.
pub(crate) fn channel<T>() -> (Publisher<T>, Flight<T>) {
    let (tx, rx) = watch::channel(None);
    (Publisher(Arc::new(tx)), Flight(rx))
}

impl<T> Publisher<T> {
    /// Publishes `value` to every waiting and later caller (replacing an earlier value).
    pub(crate) fn publish(&self, value: T) {
        self.0.send_replace(Some(value));
    }
}

impl<T: Clone> Flight<T> {
    /// The flight's result; `None` when its task ended without publishing one.
    pub(crate) async fn wait(mut self) -> Option<T> {
        match self.0.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        }
    }
}

#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
struct Registered<T> {
    id: u64,
    flight: Flight<T>,
}

/// Flights by key: [`Flights::join_or_start`] joins the flight registered for a key or starts
/// and registers a new one.
#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
pub(crate) struct Flights<K, T> {
    map: Arc<DashMap<K, Registered<T>>>,
    next_id: AtomicU64,
}

#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
impl<K: Eq + Hash, T> Default for Flights<K, T> {
    fn default() -> Self {
        Flights {
            map: Arc::new(DashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

/// Whether a caller joined a flight under way or started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
pub(crate) enum Joined {
    /// Another caller's flight was under way: this one waits on it (coalesced).
    Existing,
    /// This caller started the flight.
    Started,
}

/// The registration of one started flight, handed to its task: the flight stays joinable until
/// the task calls [`Ticket::release`] or [`Ticket::release_after`] (or drops the ticket).
#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
pub(crate) struct Ticket<K: Eq + Hash, T> {
    map: Arc<DashMap<K, Registered<T>>>,
    key: Option<K>,
    id: u64,
}

#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
impl<K: Eq + Hash, T> Ticket<K, T> {
    /// Unregisters the flight now: the next caller for the key starts a new one.
    pub(crate) fn release(mut self) {
        self.unregister();
    }

    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            let id = self.id;
            self.map.remove_if(&key, |_, r| r.id == id);
        }
    }
}

#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
impl<K, T> Ticket<K, T>
where
    K: Eq + Hash + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    /// Keeps the flight joinable (its published result answers repeats) for `window`, then
    /// unregisters it. Needs a tokio runtime.
    pub(crate) fn release_after(mut self, window: Duration) {
        if let Some(key) = self.key.take() {
            let (map, id) = (self.map.clone(), self.id);
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                map.remove_if(&key, |_, r| r.id == id);
            });
        }
    }
}

#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
impl<K: Eq + Hash, T> Drop for Ticket<K, T> {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
impl<K, T> Flights<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Joins the flight registered for `key`, or registers a new one and spawns `work` for it.
    /// `work` publishes its result and decides, with its [`Ticket`], how long the flight stays
    /// joinable. Needs a tokio runtime.
    pub(crate) fn join_or_start<W, F>(&self, key: K, work: W) -> (Flight<T>, Joined)
    where
        W: FnOnce(Publisher<T>, Ticket<K, T>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        match self.map.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => (e.get().flight.clone(), Joined::Existing),
            dashmap::Entry::Vacant(v) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (publisher, flight) = channel();
                v.insert(Registered {
                    id,
                    flight: flight.clone(),
                });
                let ticket = Ticket {
                    map: self.map.clone(),
                    key: Some(key),
                    id,
                };
                tokio::spawn(work(publisher, ticket));
                (flight, Joined::Started)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn concurrent_callers_share_one_run_and_a_released_key_starts_anew() {
        runtime().block_on(async {
            let flights: Flights<&'static str, u32> = Flights::default();
            let runs = Arc::new(AtomicUsize::new(0));
            let (gate_tx, gate_rx) = watch::channel(false);
            let mut waiting = Vec::new();
            let mut started = 0;
            for _ in 0..100 {
                let runs = runs.clone();
                let mut gate = gate_rx.clone();
                let (flight, joined) = flights.join_or_start("k", move |p, ticket| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    ticket.release();
                    p.publish(7);
                });
                started += usize::from(joined == Joined::Started);
                waiting.push(tokio::spawn(flight.wait()));
            }
            gate_tx.send_replace(true);
            for w in waiting {
                assert_eq!(w.await.unwrap(), Some(7));
            }
            assert_eq!((started, runs.load(Ordering::SeqCst)), (1, 1));
            let (flight, joined) = flights.join_or_start("k", |p, _ticket| async move {
                p.publish(8);
            });
            assert_eq!(joined, Joined::Started);
            assert_eq!(flight.wait().await, Some(8));
        });
    }

    #[test]
    fn a_result_answers_repeats_until_the_window_ends() {
        runtime().block_on(async {
            let flights: Flights<u8, u32> = Flights::default();
            let (first, _) = flights.join_or_start(1, |p, ticket| async move {
                p.publish(1);
                ticket.release_after(Duration::from_secs(60));
            });
            assert_eq!(first.wait().await, Some(1));
            let (again, joined) = flights.join_or_start(1, |p, _| async move { p.publish(2) });
            assert_eq!((joined, again.wait().await), (Joined::Existing, Some(1)));
            tokio::time::sleep(Duration::from_secs(61)).await;
            let (later, joined) = flights.join_or_start(1, |p, _| async move { p.publish(3) });
            assert_eq!((joined, later.wait().await), (Joined::Started, Some(3)));
        });
    }

    #[test]
    fn an_early_answer_releases_waiters_and_a_task_that_ends_silently_yields_none() {
        runtime().block_on(async {
            let (p, flight) = channel::<&'static str>();
            p.publish("timed out");
            assert_eq!(flight.clone().wait().await, Some("timed out"));
            p.publish("late success");
            assert_eq!(flight.wait().await, Some("late success"));

            let (p, flight) = channel::<u8>();
            drop(p);
            assert_eq!(flight.wait().await, None);
        });
    }
}
