//! Purging through the grid: by URI (its GET and HEAD entries with every `Vary` variant,
//! found through the primary's variant index) or by tag (the keys listed in the tag's index,
//! read and dropped in one transaction so a fill racing the purge lands in a new index). Other
//! instances' L1 copies go with the grid's invalidations; this instance's go at once.

use http::Uri;

use super::layer::Shared;
use super::{key, CacheError};
use crate::grid::Invalidate;

/// Keys per DEL on a single node.
const DEL_BATCH: usize = 256;

impl Shared {
    pub(super) async fn purge(&self, uri: &str) -> Result<usize, CacheError> {
        let bad = || CacheError::BadUri(uri.to_owned());
        let parsed: Uri = uri.parse().map_err(|_| bad())?;
        let host = parsed.authority().ok_or_else(bad)?.as_str();
        let pq = parsed.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut removed = 0;
        for method in ["GET", "HEAD"] {
            let primary = key::primary_of(&self.config.prefix, method, host, pq);
            let mut keys = self.take_index(&key::variants(&primary)).await?;
            keys.push(primary);
            // One slot (the primary's hash tag): one DEL even on a cluster.
            removed += self.del(&keys).await?;
            self.forget(&keys);
        }
        Ok(removed)
    }

    pub(super) async fn purge_tag(&self, tag: &str) -> Result<usize, CacheError> {
        let keys = self.take_index(&key::tag(&self.config.prefix, tag)).await?;
        let mut removed = 0;
        if self.grid.is_cluster() {
            // Tagged keys live in many slots.
            for k in &keys {
                removed += self.del(std::slice::from_ref(k)).await?;
            }
        } else {
            for chunk in keys.chunks(DEL_BATCH) {
                removed += self.del(chunk).await?;
            }
        }
        self.forget(&keys);
        Ok(removed)
    }

    /// The members of an index hash, deleting it in the same transaction.
    async fn take_index(&self, index: &str) -> Result<Vec<String>, CacheError> {
        let replies = self
            .grid
            .transaction(&[redis::cmd("HKEYS").arg(index).clone(), redis::cmd("DEL").arg(index).clone()])
            .await
            .inspect_err(|e| self.failed(e))?;
        Ok(match replies.into_iter().next() {
            Some(redis::Value::Array(items)) | Some(redis::Value::Set(items)) => items
                .into_iter()
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    async fn del(&self, keys: &[String]) -> Result<usize, CacheError> {
        if keys.is_empty() {
            return Ok(0);
        }
        match self.grid.query(redis::cmd("DEL").arg(keys)).await.inspect_err(|e| self.failed(e))? {
            redis::Value::Int(n) => Ok(n.max(0) as usize),
            other => Err(crate::grid::GridError::Protocol(format!("DEL gave {other:?}")).into()),
        }
    }

    /// Drops `keys` from this instance's L1: the grid sends no invalidation for a write
    /// through this client (tracking with NOLOOP), and the writer should see its write at once.
    pub(super) fn forget(&self, keys: &[String]) {
        if let Some(l1) = &self.l1 {
            for k in keys {
                l1.invalidate(k.as_bytes());
            }
        }
    }
}
