//! Agreement on membership and the slot map through openraft (0.9): every member is a Raft
//! voter, the log carries [`GridCommand`]s, and the state machine ([`machine`]) turns them into
//! the [`GridState`] whose map every node installs. Nothing here votes: openraft does, over
//! the cluster bus ([`crate::cluster::bus`]); this module only tells it when to stand for
//! election sooner than its own timer would ([`Consensus::elect_when_leader_silent`]).
//!
//! A node with no seeds bootstraps a grid of one. A node started with `--join` asks a member
//! (any member: non-leaders forward to the leader) to add it; the leader adds it as a Raft
//! learner, waits for it to catch up, makes it a voter, and then commits `Join`, which
//! re-places slots.

pub mod log_store;
pub mod machine;
mod network;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use super::bus::{BusClient, BusRequest, BusResponse, Stamp};
use super::membership::{GridCommand, GridState};
use super::node_id::NodeId;
use super::slotmap::NodeInfo;
use super::state::Cluster;
use machine::GridMachine;

openraft::declare_raft_types!(
    /// openraft's type parameters for the grid's log.
    pub TypeConfig:
        D = GridCommand,
        R = GridResponse,
        NodeId = NodeId,
        Node = BasicNode,
        AsyncRuntime = RaftRuntime,
);

/// openraft's runtime: tokio's; under simulation one whose election timeouts come from the
/// simulation's seed, so a run replays.
#[cfg(not(feature = "simulation"))]
pub type RaftRuntime = openraft::TokioRuntime;
/// openraft's runtime: tokio's; under simulation one whose election timeouts come from the
/// simulation's seed, so a run replays.
#[cfg(feature = "simulation")]
pub type RaftRuntime = crate::simulation::SimRuntime;

/// What applying a log entry answers: the slot map epoch after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridResponse {
    /// Epoch of the map in force after the entry.
    pub epoch: u64,
}

/// How long a forwarded join or leave may take: the leader waits for a new member to catch up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Milliseconds between the leader's heartbeats.
const HEARTBEAT_MS: u64 = 250;
/// With `cluster-fast-election`: how long a follower refuses to vote for another candidate
/// after its leader's last heartbeat (openraft 0.9 uses `election_timeout_max` for it). Safety does not rest on it: a
/// silent member's slots move only after the failover timeout, and a member cut off stops
/// serving after half of that.
const VOTE_LEASE_MS: u64 = 1100;

/// This node's part in the consensus group.
pub struct Consensus {
    /// The Raft instance (metrics, shutdown).
    pub raft: Raft<TypeConfig>,
    me: NodeInfo,
    replicas: usize,
    machine: GridMachine,
    /// One membership change at a time on this node, so two joins do not race each other.
    changes: tokio::sync::Mutex<()>,
    /// The node's cluster view, whose lease AppendEntries from the leader extend.
    cluster: Arc<Cluster>,
    /// How long one contact with the leader (or a majority) lets this node serve.
    lease: Duration,
    /// Pause detection: the lease keeper's last tick, and until when no AppendEntries may
    /// extend the lease (see [`Consensus::lease_from_contact`]).
    watchdog: parking_lot::Mutex<(tokio::time::Instant, Option<tokio::time::Instant>)>,
    /// The leader this node last accepted AppendEntries from, and when it sent it (as the
    /// lease counts): a new leader starts the old one's failure clock there, not at its own
    /// election (see `detect_failures`).
    leader_contact: parking_lot::Mutex<Option<(NodeId, tokio::time::Instant)>>,
    /// When this node last accepted AppendEntries from a leader (its own clock): how long the
    /// leader has been silent, for [`Consensus::elect_when_leader_silent`].
    heard_from_leader: parking_lot::Mutex<Option<tokio::time::Instant>>,
    /// This process's random start id and start time, stamped on its AppendEntries.
    boot: (u64, tokio::time::Instant),
    /// Per leader process, the smallest recent send-to-receive delay seen (see [`Delays`]).
    delays: parking_lot::Mutex<HashMap<u64, Delays>>,
}

/// The fastest recent deliveries from one leader process, in microseconds of "our clock minus
/// its clock" (the clocks' offset plus the network delay): a message that took longer than
/// that was held up for the difference. Two windows of [`Delays::WINDOW_US`], so monotonic
/// clocks drifting apart never count for more than 20 s, and a long hold keeps the window
/// from before it.
#[derive(Debug, Clone, Copy)]
struct Delays {
    started_us: i128,
    current: i128,
    previous: Option<i128>,
}

impl Delays {
    const WINDOW_US: i128 = 10_000_000;

    fn new(now_us: i128, delay: i128) -> Delays {
        Delays { started_us: now_us, current: delay, previous: None }
    }

    /// Notes a message that took `delay` and returns how much longer than the fastest it took.
    fn age(&mut self, now_us: i128, delay: i128) -> i128 {
        if now_us - self.started_us > Self::WINDOW_US {
            self.previous = Some(self.current);
            self.current = delay;
            self.started_us = now_us;
        } else {
            self.current = self.current.min(delay);
        }
        let fastest = self.previous.map_or(self.current, |p| p.min(self.current));
        (delay - fastest).max(0)
    }
}

/// The bus address of a node.
pub fn bus_address(info: &NodeInfo) -> String {
    format!("{}:{}", info.host, info.bus_port)
}

/// A seed's bus address: `HOST:PORT` names a member's client port (its bus is PORT + 10000,
/// Redis's default); `HOST:PORT@BUSPORT` names the bus port, as CLUSTER NODES writes it.
pub fn seed_bus_address(seed: &str) -> Result<String, String> {
    let bad = || format!("a seed is HOST:PORT or HOST:PORT@BUSPORT, got {seed:?}");
    let (client, bus) = match seed.split_once('@') {
        Some((c, b)) => (c, Some(b.parse::<u16>().map_err(|_| bad())?)),
        None => (seed, None),
    };
    let (host, port) = client.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bus = match bus {
        Some(b) => b,
        None => port.checked_add(10000).ok_or_else(bad)?,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(format!("{host}:{bus}"))
}

impl Consensus {
    /// Opens the Raft state in `dir` (created if missing) and starts Raft. The bus must already
    /// be listening: peers talk to this node as soon as it is a learner.
    pub async fn start(
        dir: &Path,
        me: NodeInfo,
        replicas: usize,
        cluster: Arc<Cluster>,
        lease: Duration,
        fast_election: bool,
    ) -> anyhow::Result<Arc<Consensus>> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let log = log_store::LogStore::open(dir).context("cannot open the Raft log")?;
        let machine = GridMachine::open(dir, cluster.clone()).context("cannot open the Raft snapshot")?;
        let config = openraft::Config {
            cluster_name: "cachegrid".into(),
            // A follower stands for election after 1 s without a heartbeat (4 missed: a
            // loaded two-core machine must not depose a healthy leader), and grants votes
            // once `election_timeout_max` (openraft 0.9's leader lease) has passed since its
            // last heartbeat. Left to openraft alone, a dead leader is replaced only after
            // that lease plus another random timeout (3-4 s with a 2 s lease); with
            // `cluster-fast-election`, [`Consensus::elect_when_leader_silent`] stands right
            // after a 1.1 s lease instead, so a dead leader is replaced ~1.2 s after its last
            // heartbeat.
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: 1000,
            election_timeout_max: if fast_election { VOTE_LEASE_MS } else { 2000 },
            snapshot_policy: SnapshotPolicy::LogsSinceLast(100),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .context("Raft configuration")?;
        let boot = (rand::random::<u64>(), tokio::time::Instant::now());
        let raft = Raft::new(
            me.id,
            Arc::new(config),
            network::BusNetwork { applied: machine.applied.clone(), boot },
            log,
            machine.clone(),
        )
        .await
        .context("cannot start Raft")?;
        Ok(Arc::new(Consensus {
            raft,
            me,
            replicas,
            machine,
            changes: tokio::sync::Mutex::new(()),
            cluster,
            lease,
            watchdog: parking_lot::Mutex::new((tokio::time::Instant::now(), None)),
            leader_contact: parking_lot::Mutex::new(None),
            heard_from_leader: parking_lot::Mutex::new(None),
            boot,
            delays: parking_lot::Mutex::new(HashMap::new()),
        }))
    }

    /// The grid as this node has applied it.
    pub fn grid(&self) -> Option<GridState> {
        self.machine.state().grid
    }

    /// Members on their way out of the grid (their slots are moving away), for the admin port:
    /// read in place, without copying the grid.
    pub fn leaving(&self) -> Vec<NodeId> {
        self.machine.with_grid(|g| g.map(|g| g.leaving.iter().copied().collect()).unwrap_or_default())
    }

    /// The current Raft leader, if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Brings this node into a grid: a fresh node without seeds becomes a grid of one; a fresh
    /// node with seeds asks them to add it, retrying until one does; a restarted member
    /// re-announces itself if its address or zone changed. Runs until done or `shutdown`.
    pub async fn establish(
        self: &Arc<Self>,
        seeds: &[String],
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let initialized = self.raft.is_initialized().await.unwrap_or(false);
        // Raft state on disk means a restart: the keys this member held are gone with the
        // process, so it must not serve the slots its map still gives it.
        let mut restart_pending = initialized || self.cluster.is_amnesiac();
        self.cluster.set_amnesiac(restart_pending);
        if !initialized && seeds.is_empty() {
            let nodes = BTreeMap::from([(self.me.id, BasicNode::new(bus_address(&self.me)))]);
            if let Err(e) = self.raft.initialize(nodes).await {
                tracing::warn!(error = %e, "cannot initialize the grid");
            }
        }
        let mut backoff = Duration::from_millis(100);
        while restart_pending {
            match self.restarted(self.me.clone()).await {
                Ok(epoch) => {
                    self.wait_for_epoch(epoch).await;
                    tracing::info!(epoch, "restarted without data: placed again, serving");
                    self.cluster.set_amnesiac(false);
                    restart_pending = false;
                }
                Err(e) => tracing::debug!(error = %e, "restart not announced yet; retrying"),
            }
            if restart_pending {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        loop {
            match self.settle(seeds).await {
                Ok(None) => return,
                Ok(Some(epoch)) => {
                    tracing::info!(epoch, node_id = %self.me.id, "member of the grid");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "not a member of the grid yet; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One attempt of [`Consensus::establish`]: Ok(None) when nothing needed doing.
    async fn settle(&self, seeds: &[String]) -> Result<Option<u64>, String> {
        let grid = self.grid();
        if grid.as_ref().and_then(|g| g.members.get(&self.me.id)) == Some(&self.me) {
            return Ok(None);
        }
        if grid.is_none() && self.raft.is_initialized().await.unwrap_or(false) && seeds.is_empty() {
            // The first member: write the grid's first entry once this node leads.
            let write = GridCommand::Bootstrap { first: self.me.clone(), replicas: self.replicas };
            return match self.raft.client_write(write).await {
                Ok(r) => Ok(Some(r.data.epoch)),
                Err(e) => Err(e.to_string()),
            };
        }
        if grid.is_some() && self.leader().is_some() {
            // A restarted member whose address or zone changed: announce it through the leader.
            return self.join(self.me.clone()).await.map(Some);
        }
        let mut last = "no seed answered".to_string();
        for seed in seeds {
            let bus = seed_bus_address(seed)?;
            match BusClient::new(bus).call(&BusRequest::Join(self.me.clone()), CHANGE_TIMEOUT).await {
                Ok(BusResponse::Membership(Ok(epoch))) => return Ok(Some(epoch)),
                Ok(BusResponse::Membership(Err(e))) => last = format!("{seed}: {e}"),
                Ok(other) => last = format!("{seed}: unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Adds `info` to the grid (or updates its address and zone) and returns the map epoch
    /// after the change. On a non-leader this forwards to the leader.
    pub async fn join(&self, info: NodeInfo) -> Result<u64, String> {
        if self.known_leader().await != Some(self.me.id) {
            return self.forward(BusRequest::Join(info)).await;
        }
        let _turn = self.changes.lock().await;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == info.id);
        let bus = bus_address(&info);
        let known = membership.get_node(&info.id).map(|n| n.addr.clone());
        if known.as_deref() != Some(bus.as_str()) {
            let node = BasicNode::new(bus);
            if known.is_some() {
                let nodes = BTreeMap::from([(info.id, node)]);
                self.raft
                    .change_membership(ChangeMembers::SetNodes(nodes), true)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                // Blocks until the learner has caught up with the log.
                self.raft.add_learner(info.id, node, true).await.map_err(|e| e.to_string())?;
            }
        }
        if !is_voter {
            let ids = BTreeSet::from([info.id]);
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let r = self.raft.client_write(GridCommand::Join(info)).await.map_err(|e| e.to_string())?;
        Ok(r.data.epoch)
    }

    /// Takes member `id` out of the grid: gracefully (`force` false: its slots migrate to
    /// the others, then it drops out) or at once (it is gone for good). It leaves Raft once it
    /// has left the grid (see [`Consensus::reconcile`]).
    pub async fn leave(&self, id: NodeId, force: bool) -> Result<u64, String> {
        if self.known_leader().await != Some(self.me.id) {
            let request = if force { BusRequest::Forget(id) } else { BusRequest::Leave(id) };
            return self.forward(request).await;
        }
        let grid = self.grid().ok_or("the grid is not bootstrapped")?;
        if !grid.members.contains_key(&id) {
            return Err(format!("{id} is not a member"));
        }
        if grid.active().filter(|n| n.id != id).count() == 0 {
            return Err("the last member cannot leave".into());
        }
        let command = if force { GridCommand::Forget(id) } else { GridCommand::Leave(id) };
        let r = self.raft.client_write(command).await.map_err(|e| e.to_string())?;
        Ok(r.data.epoch)
    }

    /// Commits that `from` has moved `slots` to `to` (forwarded to the leader).
    pub async fn slots_moved(&self, from: NodeId, to: NodeId, slots: Vec<u16>) -> Result<u64, String> {
        if self.known_leader().await != Some(self.me.id) {
            return self.forward(BusRequest::SlotsMoved { from, to, slots }).await;
        }
        let command = GridCommand::SlotsMoved { from, to, slots };
        let r = self.raft.client_write(command).await.map_err(|e| e.to_string())?;
        Ok(r.data.epoch)
    }

    /// Commits that the member `info` restarted without its keys (forwarded to the leader);
    /// a node the grid no longer counts as a member joins instead.
    pub async fn restarted(&self, info: NodeInfo) -> Result<u64, String> {
        if self.known_leader().await != Some(self.me.id) {
            return self.forward(BusRequest::Restarted(info)).await;
        }
        if !self.grid().is_some_and(|g| g.members.contains_key(&info.id)) {
            return self.join(info).await;
        }
        let _turn = self.changes.lock().await;
        let r = self.raft.client_write(GridCommand::Restarted(info)).await;
        Ok(r.map_err(|e| e.to_string())?.data.epoch)
    }

    /// Waits (up to 30 s) until this node has installed a map of at least `epoch`.
    async fn wait_for_epoch(&self, epoch: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.cluster.view().map.epoch < epoch && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Commits that `node` holds `slots` in full (forwarded to the leader).
    pub async fn caught_up(&self, node: NodeId, epoch: u64, slots: Vec<u16>) -> Result<u64, String> {
        if self.known_leader().await != Some(self.me.id) {
            return self.forward(BusRequest::CaughtUp { node, epoch, slots }).await;
        }
        let r = self.raft.client_write(GridCommand::CaughtUp { node, epoch, slots }).await;
        Ok(r.map_err(|e| e.to_string())?.data.epoch)
    }

    /// Tells the grid this node has finished a full sync of `slots` (asked under the map of
    /// `epoch`), retrying through leader changes; it gives up once its map no longer lists it
    /// as a replica of any of them (the report would change nothing).
    pub async fn report_caught_up(self: Arc<Self>, epoch: u64, slots: Vec<u16>) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.caught_up(self.me.id, epoch, slots.clone()).await {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "caught-up report not committed yet"),
            }
            let view = self.cluster.view();
            let Some(me) = view.me else { return };
            if !slots.iter().any(|&s| view.map.slots[s as usize].replicas.contains(&me)) {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether this node has applied the log up to `leader_commit` (waiting a moment for it):
    /// a lease is extended only then, so a member back from a partition does not serve, with
    /// the map it had before it was failed over, slots that are no longer its own (writes it
    /// acknowledged there were lost: tests/faults.rs found it).
    async fn applied_through(&self, leader_commit: Option<u64>) -> bool {
        if leader_commit.is_none() {
            return true;
        }
        self.raft
            .wait(Some(Duration::from_millis(100)))
            .applied_index_at_least(leader_commit, "the lease waits for the committed map")
            .await
            .is_ok()
    }

    /// Extends a follower's lease from an AppendEntries read at `received` — unless this
    /// process was just paused (SIGSTOP, a stalled VM): requests the kernel buffered during
    /// the pause are read first on resuming and may come from a leader that has since failed
    /// this node over, so for one lease after a pause no request extends it.
    fn lease_from_contact(&self, received: tokio::time::Instant, sent: tokio::time::Instant) {
        let mut w = self.watchdog.lock();
        let (last_tick, quiet_until) = *w;
        if received.saturating_duration_since(last_tick) > self.lease / 2 {
            *w = (last_tick, Some(received + self.lease));
            return;
        }
        if quiet_until.is_some_and(|q| received < q) {
            return;
        }
        self.cluster.extend_lease(sent + self.lease);
    }

    /// When, on this node's clock, the leader sent a message received at `received`: its
    /// arrival less how much longer it took than the fastest recent one from that leader.
    fn sent_at(&self, stamp: &Stamp, received: tokio::time::Instant) -> tokio::time::Instant {
        let now_us = received.saturating_duration_since(self.boot.1).as_micros() as i128;
        let delay = now_us - stamp.sent_us as i128;
        let mut delays = self.delays.lock();
        let age = delays.entry(stamp.boot).or_insert_with(|| Delays::new(now_us, delay)).age(now_us, delay);
        if delays.len() > 64 {
            delays.retain(|_, d| now_us - d.started_us < 2 * Delays::WINDOW_US);
        }
        received.checked_sub(Duration::from_micros(age as u64)).unwrap_or(received)
    }

    /// Keeps this node's lease, every 50 ms: it applies once the grid has several members; a
    /// leader extends it from its last majority acknowledgement (openraft's
    /// `millis_since_quorum_ack`), a follower with every AppendEntries it accepts (see
    /// [`Consensus::handle`]). Half the failover timeout, so a member cut off from the leader
    /// stops serving before the leader can give its slots away; all on the monotonic clock.
    pub async fn keep_lease(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut was_fenced = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            {
                let mut w = self.watchdog.lock();
                let now = tokio::time::Instant::now();
                if now.saturating_duration_since(w.0) > self.lease / 2 && w.1.is_none_or(|q| q < now) {
                    // This tick itself came late: a pause, seen here first.
                    w.1 = Some(now + self.lease);
                }
                w.0 = now;
            }
            let several = self.machine.with_grid(|g| g.is_some_and(|g| g.members.len() > 1));
            if self.leader() == Some(self.me.id) {
                let ack = self.raft.metrics().borrow().millis_since_quorum_ack;
                if let Some(ms) = ack {
                    let acked = tokio::time::Instant::now().checked_sub(Duration::from_millis(ms));
                    if let Some(at) = acked {
                        self.cluster.extend_lease(at + self.lease);
                    }
                }
            }
            self.cluster.guard_with_lease(several);
            let fenced = self.cluster.fenced();
            if fenced != was_fenced {
                if fenced {
                    tracing::warn!(me = %self.me.id, "cut off from the grid's majority: serving no keys until back in touch");
                } else {
                    tracing::info!(me = %self.me.id, "in touch with the grid's majority again: serving");
                }
                was_fenced = fenced;
            }
        }
    }

    /// Stands for election as soon as the leader has been silent for the vote lease plus a
    /// random jitter (under 200 ms, so two followers rarely stand at once), instead of
    /// openraft's own timer, which runs out inside the other voters' lease and then waits a
    /// whole election timeout more. Another node's standing (the term moving on without this
    /// node) counts as contact, so a follower that just voted does not stand against the
    /// candidate it voted for. Only a voter that has had a leader stands, and once per leader
    /// lost: a new grid, a joiner and a failed stand are left to openraft. Checked every 50 ms.
    pub async fn elect_when_leader_silent(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        use rand::Rng;
        let lease = Duration::from_millis(VOTE_LEASE_MS);
        // openraft's generator: seeded under simulation, so a simulated run replays.
        let jitter =
            || Duration::from_millis(<RaftRuntime as openraft::AsyncRuntime>::thread_rng().gen_range(0..200));
        let mut wait = lease + jitter();
        // Since when nothing happened: the leader's last AppendEntries, another node's move to
        // a new term, or this node's own last stand.
        let mut quiet_since: Option<tokio::time::Instant> = None;
        let (mut last_term, mut own_term) = (0u64, 0u64);
        // Once per leader lost: should this stand fail, openraft's own timer retries. A node
        // failed over while cut off still counts itself a voter; standing again and again, its
        // ever higher terms would depose the grid's leader (openraft 0.9 has no pre-vote).
        let (mut stood, mut last_heard) = (false, None);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let now = tokio::time::Instant::now();
            let (term, leading, voter) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let voter = m.membership_config.membership().voter_ids().any(|v| v == self.me.id);
                (m.current_term, m.state.is_leader(), voter)
            };
            let heard = *self.heard_from_leader.lock();
            if heard.is_some_and(|h| quiet_since.is_none_or(|q| h > q)) && heard != last_heard {
                quiet_since = heard;
                last_heard = heard;
                stood = false;
            }
            if term != last_term {
                if term != own_term && quiet_since.is_some() {
                    quiet_since = Some(now);
                }
                last_term = term;
            }
            let Some(quiet) = quiet_since else { continue };
            if stood || leading || !voter || now.saturating_duration_since(quiet) < wait {
                continue;
            }
            tracing::info!(
                me = %self.me.id,
                term,
                silent_ms = now.saturating_duration_since(quiet).as_millis() as u64,
                "the leader is silent: standing for election"
            );
            own_term = term + 1;
            quiet_since = Some(now);
            stood = true;
            wait = lease + jitter();
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not stand for election");
            }
        }
    }

    /// The failure detector, on the leader: pings every member each 250 ms; one silent for
    /// longer than `timeout` is failed over (`Forget`: its slots go to their replicas, which
    /// hold its data as far as replication got). It rejoins by itself when it is back.
    pub async fn detect_failures(
        self: Arc<Self>,
        timeout: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        // When each member last answered, and whether it ever has since this node led.
        let mut last_ok: HashMap<NodeId, (tokio::time::Instant, bool)> = HashMap::new();
        let mut links: HashMap<NodeId, BusClient> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            // Members, and whether each has another active member to take its slots.
            let members: Option<Vec<(NodeInfo, bool)>> = self.machine.with_grid(|g| {
                let g = g?;
                Some(g.members.values().map(|n| (n.clone(), g.active().any(|o| o.id != n.id))).collect())
            });
            let (Some(members), true) = (members, self.leader() == Some(self.me.id)) else {
                last_ok.clear();
                continue;
            };
            let now = tokio::time::Instant::now();
            if last_ok.is_empty() {
                // Just became leader: the members it inherits were answering the previous one;
                // only members that join from now on get the newcomer's grace. The previous
                // leader was last heard when it sent the last AppendEntries this node accepted: an
                // election took at least the election timeout since, so a dead leader is
                // failed over at the first failed ping instead of a whole timeout later.
                // A process that has heard from no leader since it started (the whole grid
                // restarted: openraft makes the old leader leader again from its saved vote, or
                // two fresh processes elect one) knows nothing of the others, which may be
                // starting too (a restart re-applies the log before it answers): they get the
                // newcomer's grace.
                let contact = *self.leader_contact.lock();
                for (n, _) in &members {
                    last_ok.insert(n.id, (now, contact.is_some()));
                }
                if let Some((old, at)) = contact.filter(|(old, _)| *old != self.me.id) {
                    if let Some(seen) = last_ok.get_mut(&old) {
                        seen.0 = at;
                    }
                }
            }
            let others: Vec<NodeInfo> =
                members.iter().map(|(n, _)| n.clone()).filter(|n| n.id != self.me.id).collect();
            last_ok.retain(|id, _| members.iter().any(|(n, _)| n.id == *id));
            let replaceable = |id: NodeId| members.iter().any(|(n, others)| n.id == id && *others);
            let mut pings = tokio::task::JoinSet::new();
            for n in &others {
                let link = links.remove(&n.id).unwrap_or_else(|| BusClient::new(bus_address(n)));
                let id = n.id;
                pings.spawn(async move {
                    let answer = link.call(&BusRequest::Ping, Duration::from_millis(500)).await;
                    (id, link, matches!(answer, Ok(BusResponse::Pong)), tokio::time::Instant::now())
                });
            }
            while let Some(Ok((id, link, ok, at))) = pings.join_next().await {
                links.insert(id, link);
                let (seen, answered) = last_ok.entry(id).or_insert((now, false));
                // A member that joined under this leader and has not answered yet gets five
                // times as long: a slow start is not a failure.
                let limit = if *answered { timeout } else { timeout * 5 };
                // Silence is measured when the ping failed, not now: a result read after this
                // task waited (on a commit, on a stalled machine) is no evidence of that wait.
                if ok {
                    *seen = at;
                    *answered = true;
                } else if at.saturating_duration_since(*seen) > limit && replaceable(id) {
                    tracing::warn!(node = %id, silent_ms = seen.elapsed().as_millis() as u64, "member not answering: failing it over");
                    match self.raft.client_write(GridCommand::Forget(id)).await {
                        Ok(r) => {
                            self.cluster
                                .counters
                                .failovers
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(node = %id, epoch = r.data.epoch, log = %r.log_id, "failed over")
                        }
                        Err(e) => tracing::warn!(node = %id, error = %e, "failover not committed"),
                    }
                    last_ok.remove(&id);
                    // One failover per round: the commit may have taken long, and the others'
                    // results (and who can still be replaced) are from before it. They are
                    // pinged afresh.
                    break;
                }
            }
        }
    }

    /// Brings this node back after the grid failed it over while it was alive (paused, cut
    /// off, or just slow): once its own log says it is no longer a member, or it has been cut
    /// off from the majority for twice `timeout` (the others may have forgotten it without
    /// it hearing), it asks the members it knew to add it again, every 2 s, as a joining node
    /// does. Added again, it gets slots by placement (usually replicas first) and its stale
    /// copies are dropped (see `cluster::stale`). A member that left on purpose stays out.
    pub async fn rejoin(self: Arc<Self>, timeout: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let mut fenced_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            // Whether this node is a member, and whom it knows.
            let Some((member, peers)) = self.machine.with_grid(|g| {
                let g = g?;
                let peers: Vec<String> =
                    g.members.values().filter(|n| n.id != self.me.id).map(bus_address).collect();
                Some((g.members.contains_key(&self.me.id), peers))
            }) else {
                continue; // not in a grid yet: `establish` is at work
            };
            if self.cluster.has_left() || peers.is_empty() {
                continue;
            }
            fenced_since = match (self.cluster.fenced(), fenced_since) {
                (false, _) => None,
                (true, None) => Some(tokio::time::Instant::now()),
                (true, since) => since,
            };
            let long_cut_off = fenced_since.is_some_and(|t| t.elapsed() > timeout * 2);
            if member && !long_cut_off {
                continue;
            }
            for peer in &peers {
                match BusClient::new(peer.clone())
                    .call(&BusRequest::Join(self.me.clone()), CHANGE_TIMEOUT)
                    .await
                {
                    Ok(BusResponse::Membership(Ok(epoch))) => {
                        if !member {
                            tracing::info!(epoch, "back in the grid after being failed over");
                        }
                        fenced_since = None;
                        break;
                    }
                    other => {
                        tracing::debug!(peer = %peer, answer = ?other.map(|_| ()), "asking to be let back in")
                    }
                }
            }
        }
    }

    /// On the leader, every second: Raft voters and learners that are no longer grid members
    /// (they left, or were forgotten) are removed from Raft too.
    pub async fn reconcile(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if self.leader() != Some(self.me.id) {
                continue;
            }
            // The grid is read under the lock: a join that held it is fully applied by then.
            let _turn = self.changes.lock().await;
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let gone: Option<BTreeSet<NodeId>> = self.machine.with_grid(|g| {
                let g = g?;
                Some(membership.nodes().map(|(id, _)| *id).filter(|id| !g.members.contains_key(id)).collect())
            });
            let Some(gone) = gone else { continue };
            if gone.is_empty() {
                continue;
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().filter(|v| gone.contains(v)).collect();
            if !voters.is_empty() {
                if let Err(e) = self.raft.change_membership(ChangeMembers::RemoveVoters(voters), false).await
                {
                    tracing::debug!(error = %e, "cannot remove departed voters yet");
                    continue;
                }
            }
            if let Err(e) = self.raft.change_membership(ChangeMembers::RemoveNodes(gone), false).await {
                tracing::debug!(error = %e, "cannot remove departed learners yet");
            }
        }
    }

    /// Waits (a few seconds at most) until a leader is known: right after a start or an
    /// election there is none for a moment.
    async fn known_leader(&self) -> Option<NodeId> {
        let waited = self.raft.wait(Some(Duration::from_secs(5)));
        waited.metrics(|m| m.current_leader.is_some(), "a known leader").await.ok()?.current_leader
    }

    /// Sends a membership request to the leader.
    async fn forward(&self, request: BusRequest) -> Result<u64, String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader.ok_or("no leader is known yet")?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or("the leader has no address")?;
        match BusClient::new(node.addr).call(&request, CHANGE_TIMEOUT).await {
            Ok(BusResponse::Membership(r)) => r,
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Answers one bus request.
    pub async fn handle(self: &Arc<Self>, request: BusRequest) -> BusResponse {
        match request {
            BusRequest::AppendEntries(rpc, stamp) => {
                let received = tokio::time::Instant::now();
                let sent = self.sent_at(&stamp, received);
                // What the lease waits for: the leader's commit as this message states it, and
                // everything the leader had applied when it sent it (a failed-over member's
                // catch-up batches state a commit before its own removal: the simulation's
                // held-messages scenario lost writes so).
                let leader_commit = rpc.leader_commit.map(|l| l.index).max(stamp.applied.checked_sub(1));
                let leader = rpc.vote.leader_id().node_id;
                let r = self.raft.append_entries(rpc).await;
                if matches!(&r, Ok(openraft::raft::AppendEntriesResponse::Success)) {
                    *self.leader_contact.lock() = Some((leader, sent));
                    *self.heard_from_leader.lock() = Some(received);
                    // The lease waits for the leader's commit to be applied here, but the reply
                    // does not: a held reply reorders heartbeats and appends at the leader,
                    // which openraft 0.9 takes for a follower's log going back (and panics).
                    let this = self.clone();
                    tokio::spawn(async move {
                        if this.applied_through(leader_commit).await {
                            tracing::debug!(me = %this.me.id, %leader, ?leader_commit, epoch = this.cluster.view().map.epoch, applied = ?this.raft.metrics().borrow().last_applied, held_ms = (received - sent).as_millis() as u64, "lease from AppendEntries");
                            this.lease_from_contact(received, sent);
                        }
                    });
                }
                BusResponse::AppendEntries(r)
            }
            BusRequest::Ping => BusResponse::Pong,
            // Answered by the bus itself (it needs the admin port), never here.
            BusRequest::Status => BusResponse::Status(None),
            BusRequest::Vote(rpc) => BusResponse::Vote(self.raft.vote(rpc).await),
            BusRequest::InstallSnapshot(rpc) => {
                BusResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            BusRequest::Join(info) => BusResponse::Membership(self.join(info).await),
            BusRequest::Leave(id) => BusResponse::Membership(self.leave(id, false).await),
            BusRequest::Forget(id) => BusResponse::Membership(self.leave(id, true).await),
            BusRequest::SlotsMoved { from, to, slots } => {
                BusResponse::Membership(self.slots_moved(from, to, slots).await)
            }
            BusRequest::Restarted(info) => BusResponse::Membership(self.restarted(info).await),
            BusRequest::CaughtUp { node, epoch, slots } => {
                BusResponse::Membership(self.caught_up(node, epoch, slots).await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_name_the_client_port_or_the_bus_port() {
        assert_eq!(seed_bus_address("10.0.0.1:7379").unwrap(), "10.0.0.1:17379");
        assert_eq!(seed_bus_address("node-a:7000@17500").unwrap(), "node-a:17500");
        assert!(seed_bus_address("node-a").is_err());
        assert!(seed_bus_address(":7000").is_err());
        assert!(seed_bus_address("a:70000").is_err());
        assert!(seed_bus_address("a:60000").is_err(), "no bus port above 65535");
    }
}
