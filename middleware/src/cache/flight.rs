//! In-process single flight: of concurrent misses for one key, the first (the leader) calls
//! the upstream; the others wait until it is done (or gone), then look again, knowing how
//! it went.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// How a leader's fill ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    /// Still running.
    Pending,
    /// Done: the grid has the response if it could be stored (or the leader gave up).
    Done,
    /// The upstream failed (5xx, error or timeout).
    Failed,
}

/// Keys being filled by a request of this process.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

/// What a request got from [`Flights::join`].
pub(crate) enum Role {
    /// Fill the key; dropping the guard wakes the followers.
    Leader(Guard),
    /// Another request is filling the key: wait on this.
    Follower(watch::Receiver<Outcome>),
}

/// Held by the leader; on drop (done, failed or cancelled) the key is free again.
pub(crate) struct Guard {
    flights: Arc<Flights>,
    key: String,
    done: watch::Sender<Outcome>,
    outcome: Outcome,
}

impl Flights {
    /// Leads the fill of `key`, or follows the request already doing it.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Role {
        let mut map = self.map.lock();
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(Outcome::Pending);
        map.insert(key.to_owned(), rx);
        Role::Leader(Guard { flights: self.clone(), key: key.to_owned(), done: tx, outcome: Outcome::Done })
    }
}

impl Guard {
    /// Tells the followers the upstream failed.
    pub(crate) fn failed(&mut self) {
        self.outcome = Outcome::Failed;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.flights.map.lock().remove(&self.key);
        let _ = self.done.send(self.outcome);
    }
}

/// Waits until the leader is done (or gone), at most `wait`; how it ended.
pub(crate) async fn follow(mut rx: watch::Receiver<Outcome>, wait: std::time::Duration) -> Outcome {
    match tokio::time::timeout(wait, rx.wait_for(|o| *o != Outcome::Pending)).await {
        Ok(Ok(o)) => *o,
        _ => Outcome::Done,
    }
}
