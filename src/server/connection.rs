//! One client connection: read whatever arrived, run every complete request in it, and write
//! all replies with one write. Limits: query buffer size, idle timeout, maxclients. Plaintext
//! and TLS connections run the same code, generic over the stream (so the plaintext path is
//! compiled for `TcpStream` and pays nothing for TLS).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::net::TcpStream;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::{ClientState, Server};
use crate::commands;
use crate::persistence::Persistence;
use crate::protocol::{Reply, RequestParser};

/// Flush replies early once this much output is pending, so a deep pipeline cannot grow the
/// output buffer without bound.
const OUTPUT_FLUSH_AT: usize = 64 * 1024;

/// How long a write-through reply waits for Postgres before telling the client so.
const WRITE_THROUGH_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes a new connection: refused at maxclients, otherwise served on its own task.
pub fn accept(server: Arc<Server>, stream: TcpStream, peer: SocketAddr, laddr: SocketAddr) {
    server.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    tokio::spawn(run(server, stream, peer, laddr, false));
}

/// Takes a new connection on the TLS port: the handshake (bounded by
/// [`crate::tls::HANDSHAKE_TIMEOUT`]), then the same as [`accept`]. A client that fails the
/// handshake (plaintext, no or a wrong certificate) is closed.
pub fn accept_tls(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    laddr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    server.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let handshake = tokio::select! {
            r = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
            _ = server.shutdown.cancelled() => return,
        };
        match handshake {
            Ok(Ok(stream)) => run(server, stream, peer, laddr, true).await,
            // Redis logs these at verbose level too: scanners and misconfigured clients.
            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => debug!(%peer, "TLS handshake timed out"),
        }
    });
}

/// Serves one connection to its end, then forgets the client.
async fn run<S>(server: Arc<Server>, stream: S, peer: SocketAddr, laddr: SocketAddr, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if server.clients.len() >= server.maxclients.load(Ordering::Relaxed) {
        server.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let mut stream = stream;
        let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
        let _ = stream.flush().await;
        return;
    }
    if crate::acl::refuses(&server, peer.ip()) {
        let mut stream = stream;
        let _ = stream.write_all(crate::acl::DENIED.as_bytes()).await;
        let _ = stream.flush().await;
        return;
    }
    let info = server.clients.register(peer, laddr);
    let id = info.id;
    let authenticated = !server.acl.default_needs_auth();
    let mut client = ClientState::new(info, authenticated);
    client.cluster.tls = tls;
    if let Err(e) = serve(&server, stream, &mut client).await {
        debug!(client = id, error = %e, "connection closed with an error");
    }
    commands::transactions::unwatch_all(&server, &mut client);
    commands::pubsub::unsubscribe_all(&server, &mut client);
    server.tracking.disable(id);
    server.clients.unregister(id);
}

async fn serve<S>(server: &Arc<Server>, mut stream: S, client: &mut ClientState) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut parser = RequestParser::new();
    let info = client.info.clone();
    loop {
        let idle = server.idle_timeout.load(Ordering::Relaxed);
        let read = tokio::select! {
            r = stream.read_buf(&mut input) => r?,
            _ = info.kill_signal.notified() => 0,
            _ = info.pushes.wait() => {
                info.pushes.drain_into(&mut output);
                flush(server, &mut stream, &mut output).await?;
                continue;
            }
            _ = tokio::time::sleep(Duration::from_secs(idle)), if idle > 0 => {
                debug!(client = info.id, "closing idle client");
                0
            }
        };
        if read == 0 || info.killed.load(Ordering::Acquire) {
            return Ok(());
        }
        server.stats.net_input.fetch_add(read as u64, Ordering::Relaxed);
        if input.len() > server.query_buffer_limit.load(Ordering::Relaxed) {
            tracing::warn!(client = info.id, "closing client that reached the query buffer limit");
            return Ok(());
        }
        let mut close = false;
        client.now_ms = crate::store::clock::now_ms();
        // Pushes queued before these requests go out before their replies (a client's PING
        // is then a barrier for invalidations).
        info.pushes.drain_into(&mut output);
        loop {
            let limits = server.limits(client.authenticated);
            match parser.next(&mut input, &limits) {
                Ok(Some(args)) => {
                    crate::replication::begin_command();
                    let reply = match server.persistence.get() {
                        None => commands::execute(server, client, args),
                        Some(p) => persisted(server, p, client, args).await,
                    };
                    let reply = replicated(server, client, reply).await;
                    if reply.is_error() {
                        server.stats.error_replies.fetch_add(1, Ordering::Relaxed);
                    }
                    reply.encode(client.resp, &mut output);
                    if client.close_after_reply {
                        close = true;
                        break;
                    }
                    if output.len() >= OUTPUT_FLUSH_AT {
                        flush(server, &mut stream, &mut output).await?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::error(format!("ERR {e}")).encode(client.resp, &mut output);
                    close = true;
                    break;
                }
            }
        }
        info.pushes.drain_into(&mut output);
        flush(server, &mut stream, &mut output).await?;
        if close || info.killed.load(Ordering::Acquire) {
            return Ok(());
        }
    }
}

/// Runs a command on a node with Postgres-backed key spaces: loads missing keys first
/// (read-through), and for write-through keys waits for the commit before the reply.
async fn persisted(
    server: &Arc<Server>,
    p: &Arc<Persistence>,
    client: &mut ClientState,
    args: Vec<bytes::Bytes>,
) -> Reply {
    if let Err(reply) = p.prepare(server, client.now_ms, &args, client.cluster).await {
        return reply;
    }
    Persistence::begin_command();
    let reply = commands::execute(server, client, args);
    if let Some(ticket) = Persistence::ticket() {
        if !reply.is_error() && !p.wait(ticket, WRITE_THROUGH_TIMEOUT).await {
            return Reply::error(
                "TRYAGAIN write-through: Postgres has not committed the write yet (it is queued durably and will be written)",
            );
        }
    }
    reply
}

/// In a grid: notes what the command wrote for WAIT, holds the reply of a write to a `sync`
/// key space until its replicas have applied it, and carries out WAIT.
async fn replicated(server: &Server, client: &mut ClientState, reply: Reply) -> Reply {
    let Some(r) = server.replication.get() else {
        // No replicas here: WAIT counts none, after its timeout as in Redis (0: until the
        // connection or the node goes away).
        if let Some((need, timeout_ms)) = client.pending_wait.take() {
            if need > 0 {
                let forever = std::future::pending::<()>();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(timeout_ms)), if timeout_ms > 0 => {}
                    _ = forever, if timeout_ms == 0 => {}
                    _ = server.shutdown.cancelled() => {}
                    _ = client.info.kill_signal.notified() => {}
                }
            }
        }
        return reply;
    };
    let mut reply = reply;
    if let Some(w) = crate::replication::last_write() {
        client.wrote.seq = w.seq;
        client.wrote.add_replicas(&w.replicas);
        if w.sync && !reply.is_error() {
            let need = w.replicas.len();
            if r.wait_for(w.seq, &w.replicas, need, Some(r.sync_timeout)).await < need {
                reply = Reply::error(format!(
                    "TIMEOUT the write is applied on this primary but not every replica confirmed it within {} ms: its outcome is unknown",
                    r.sync_timeout.as_millis()
                ));
            } else {
                crate::faults::point("replication-acked-before-reply");
            }
        }
    }
    if let Some((need, timeout_ms)) = client.pending_wait.take() {
        let replicas = r.wait_targets(&client.wrote);
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        let n = tokio::select! {
            n = r.wait_for(client.wrote.seq, &replicas, need, timeout) => n,
            _ = server.shutdown.cancelled() => r.acked_count(client.wrote.seq, &replicas),
            _ = client.info.kill_signal.notified() => r.acked_count(client.wrote.seq, &replicas),
        };
        reply = Reply::Int(n as i64);
    }
    reply
}

async fn flush<S: AsyncWrite + Unpin>(
    server: &Server,
    stream: &mut S,
    output: &mut BytesMut,
) -> std::io::Result<()> {
    if let Some(p) = server.persistence.get() {
        // Records of the commands answered here reach the disk before their replies leave.
        p.before_reply().await;
    }
    if output.is_empty() {
        return Ok(());
    }
    stream.write_all(output).await?;
    // TLS may still hold records the socket would not take yet (a no-op for plain TCP).
    stream.flush().await?;
    server.stats.net_output.fetch_add(output.len() as u64, Ordering::Relaxed);
    output.clear();
    Ok(())
}
