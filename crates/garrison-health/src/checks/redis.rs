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
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl RedisCheck {
    /// A check of the Redis at `url` (`redis://host:6379/0`). Fails only when the URL is
    /// malformed; nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self::from_client(redis::Client::open(url)?))
    }

    /// A check through an existing client.
    pub fn from_client(client: redis::Client) -> Self {
        Self {
            client,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn run(&self) -> CheckResult {
        let mut slot = self.conn.lock().await;
        let started = Instant::now();
        if slot.is_none() {
            match self.client.get_multiplexed_async_connection().await {
                Ok(c) => *slot = Some(c),
                Err(e) => return fail(&e),
            }
        }
        let Some(conn) = slot.as_mut() else {
            return CheckResult::fail("no connection");
        };
        let ping = Instant::now();
        match redis::cmd("PING").query_async::<String>(conn).await {
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
