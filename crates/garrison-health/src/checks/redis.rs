use std::time::Instant;

use redis::aio::MultiplexedConnection;

use crate::check::BoxFuture;
use crate::status::ms;
use crate::{Check, CheckResult, Measurement};

/// Sends `PING` to Redis and reports the round trip as `redis:responseTime` (ms).
///
/// The connection is opened on the first run and kept; a failed command drops it, so the
/// next run reconnects. A Redis that hangs is cut off by the check's timeout.
#[derive(Debug)]
pub struct RedisCheck {
    client: Client,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// One server, or a cluster.
#[derive(Debug)]
enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

enum Conn {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Single",
            Conn::Cluster(_) => "Cluster",
        })
    }
}

impl RedisCheck {
    /// A check of the Redis at `url` (`redis://host:6379/0`), or of a Redis Cluster
    /// (`redis+cluster://host1:port1,host2:port2`: `PING` goes to its nodes, and the check
    /// passes when they answer). Fails only when the URL is malformed; nothing is connected
    /// yet.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        match garrison_core::redis_cluster_nodes(url) {
            Some(nodes) => Ok(Self {
                client: Client::Cluster(Box::new(redis::cluster::ClusterClient::new(nodes)?)),
                conn: tokio::sync::Mutex::new(None),
            }),
            None => Ok(Self::from_client(redis::Client::open(url)?)),
        }
    }

    /// A check through an existing client.
    pub fn from_client(client: redis::Client) -> Self {
        Self {
            client: Client::Single(client),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn run(&self) -> CheckResult {
        let mut slot = self.conn.lock().await;
        let started = Instant::now();
        if slot.is_none() {
            let opened = match &self.client {
                Client::Single(c) => c.get_multiplexed_async_connection().await.map(Conn::Single),
                Client::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
            };
            match opened {
                Ok(c) => *slot = Some(c),
                Err(e) => return fail(&e),
            }
        }
        let Some(conn) = slot.as_mut() else {
            return CheckResult::fail("no connection");
        };
        let ping = Instant::now();
        let answer = match conn {
            Conn::Single(c) => redis::cmd("PING").query_async::<String>(c).await,
            Conn::Cluster(c) => redis::cmd("PING").query_async::<String>(c).await,
        };
        match answer {
            Ok(pong) if pong == "PONG" => CheckResult::pass().measurement(
                Measurement::new("responseTime")
                    .observed(ms(ping.elapsed()), "ms")
                    .field("connectMs", ms(ping.duration_since(started))),
            ),
            Ok(other) => {
                *slot = None;
                CheckResult::fail(format!("unexpected answer to PING: {other:.32}"))
            }
            Err(e) => {
                *slot = None;
                fail(&e)
            }
        }
    }
}

fn fail(e: &redis::RedisError) -> CheckResult {
    CheckResult::pass().measurement(Measurement::new("responseTime").fail(format!("redis: {e}")))
}

impl Check for RedisCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(self.run())
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("datastore")
    }
}
