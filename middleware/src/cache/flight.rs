//! In-process single flight: of concurrent misses for one key, the first (the leader) calls
//! the upstream; the others wait until it has filled the grid (or given up), then look again.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Keys being filled by a request of this process.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

/// What a request got from [`Flights::join`].
pub(crate) enum Role {
    /// Fill the key; dropping the guard wakes the followers.
    Leader(Guard),
    /// Another request is filling the key: wait on this.
    Follower(watch::Receiver<bool>),
}

/// Held by the leader; on drop (done, failed or cancelled) the key is free again.
pub(crate) struct Guard {
    flights: Arc<Flights>,
    key: String,
    done: watch::Sender<bool>,
}

impl Flights {
    /// Leads the fill of `key`, or follows the request already doing it.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Role {
        let mut map = self.map.lock();
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(false);
        map.insert(key.to_owned(), rx);
        Role::Leader(Guard { flights: self.clone(), key: key.to_owned(), done: tx })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.flights.map.lock().remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// Waits until the leader is done (or gone), at most `wait`.
pub(crate) async fn follow(mut rx: watch::Receiver<bool>, wait: std::time::Duration) {
    let _ = tokio::time::timeout(wait, rx.wait_for(|done| *done)).await;
}
