//! The backplane's command connection: one Redis server or a cluster, reconnecting by itself,
//! and marked broken after a timeout so the next call makes a new one.
use crate::cluster::ClusterTarget;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Value};
use std::sync::Arc;

/// Where the backplane's Redis is: one server, or a cluster.
#[derive(Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    Cluster(ClusterTarget),
}

impl Target {
    /// The one server node-to-node relay messages go through (crate::relay).
    pub(crate) fn relay_client(&self) -> redis::Client {
        match self {
            Target::Single(c) => c.clone(),
            Target::Cluster(c) => c.first_node_client(),
        }
    }
}

/// A command connection to either kind of target. Both reconnect by themselves.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The command connection with a health mark: a timeout or a lost connection marks it broken
/// and the next `conn()` builds a new one. Without this, a silently dead connection (no FIN, no
/// RST) would keep failing every publish and history read: the connection manager only
/// reconnects when the socket reports an error.
#[derive(Clone)]
pub(crate) struct Checked {
    pub(crate) conn: Conn,
    pub(crate) broken: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) fn gone(e: &redis::RedisError) -> bool {
    e.is_timeout() || e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal()
}

/// Marks `broken` when the command behind `fut` fails for want of a working connection.
pub(crate) fn watched<'a, T: Send + 'a>(
    broken: Arc<std::sync::atomic::AtomicBool>,
    fut: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    Box::pin(async move {
        let r = fut.await;
        if let Err(e) = &r
            && gone(e)
        {
            broken.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        r
    })
}

impl ConnectionLike for Checked {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        watched(self.broken.clone(), self.conn.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        watched(
            self.broken.clone(),
            self.conn.req_packed_commands(cmd, offset, count),
        )
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
