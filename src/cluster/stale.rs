//! Dropping copies this node can no longer vouch for. When the map makes this node the
//! importer or a replica of a slot, or takes the slot from it, whatever it held of that slot
//! came from an earlier role and may include keys deleted since: an importer or a new replica
//! would serve them again once promoted. [`Cluster::install`] marks such slots unready; this
//! task empties them, one shard lock at a time, and marks them ready. Imports, replication
//! batches and ASKING writes wait for the mark (they are refused and retried), so nothing
//! that arrives for the new role is dropped.

use std::sync::Arc;
use std::time::Duration;

use super::state::{Cluster, SlotRole};
use crate::server::Server;
use crate::store::clock::now_ms;

/// Runs until shutdown.
pub async fn run(server: Arc<Server>, cluster: Arc<Cluster>) {
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = cluster.unready_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let slots = cluster.unready_slots();
        let mut dropped = 0usize;
        for slot in slots {
            dropped += drop_slot(&server, &cluster, slot);
            tokio::task::yield_now().await;
        }
        if dropped > 0 {
            tracing::info!(
                keys = dropped,
                "dropped copies of slots this node no longer holds or will be sent afresh"
            );
        }
    }
}

/// Empties `slot` unless this node is its primary by now, then marks it ready.
fn drop_slot(server: &Server, cluster: &Cluster, slot: u16) -> usize {
    let mut db = server.keyspace.lock_slot(slot, now_ms());
    let mut dropped = 0;
    // Read under the lock: a map installed meanwhile has marked the slot again if needed.
    if cluster.view().role(slot) != SlotRole::Primary {
        // Not write-behind deletes: the slot's primary owns its rows.
        let keys = db.keys_in_slot(slot as usize, usize::MAX);
        for key in &keys {
            db.remove_migrated(key);
        }
        dropped = keys.len();
    }
    cluster.mark_ready(slot);
    dropped
}
