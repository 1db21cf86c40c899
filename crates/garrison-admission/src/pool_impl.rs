// The same admission in front of a sqlx pool's acquires, written once for the sqlx of the
// module that includes this file (`sqlx` 0.9 at the crate root, `sqlx_0_8` in
// `garrison_admission::sqlx_0_8`), which names its sqlx `sqlx`.

use std::fmt;
use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use crate::{Admission, Permit, Priority, Shed};

/// A pool connection acquired through an [`Admission`]: the permit is held until the
/// connection goes back to the pool (dropped), so that at most `limit` connections are out
/// through it and the rest wait in priority order instead of in sqlx's first-come queue.
pub struct Admitted<DB: Database> {
    // the connection goes back to the pool before the permit lets the next caller in
    conn: PoolConnection<DB>,
    _permit: Permit,
}

impl<DB: Database> fmt::Debug for Admitted<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted").finish_non_exhaustive()
    }
}

impl<DB: Database> Deref for Admitted<DB> {
    type Target = PoolConnection<DB>;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<DB: Database> DerefMut for Admitted<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// Why [`acquire_connection`] gave no connection.
#[derive(Debug)]
pub enum PoolAcquireError {
    /// The admission shed the caller (queue full, its class's timeout, evicted).
    Shed(Shed),
    /// The pool itself failed (its acquire timeout, a closed pool, the database down).
    Pool(sqlx::Error),
}

impl fmt::Display for PoolAcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shed(s) => write!(f, "no connection: {s}"),
            Self::Pool(e) => write!(f, "no connection: {e}"),
        }
    }
}

impl std::error::Error for PoolAcquireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Shed(s) => Some(s),
            Self::Pool(e) => Some(e),
        }
    }
}

/// A connection from `pool`, admitted by `admission` at `priority` first: the seeds' use,
/// where user-facing queries go before analytics when the pool runs short. Size the
/// admission's limit at or below the pool's `max_connections`.
///
/// ```
/// use garrison_admission::{acquire_connection, Admission, Priority};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(4).connect("sqlite::memory:").await?;
/// let admission = Admission::builder().max_in_flight(4).build()?;
/// let mut conn = acquire_connection(&admission, &pool, Priority::Critical).await?;
/// let (one,): (i64,) = sqlx::query_as("SELECT 1").fetch_one(&mut **conn).await?;
/// assert_eq!(one, 1);
/// # Ok(()) }
/// ```
pub async fn acquire_connection<DB: Database>(
    admission: &Admission,
    pool: &Pool<DB>,
    priority: Priority,
) -> Result<Admitted<DB>, PoolAcquireError> {
    let permit = admission
        .acquire(priority)
        .await
        .map_err(PoolAcquireError::Shed)?;
    let conn = pool.acquire().await.map_err(PoolAcquireError::Pool)?;
    Ok(Admitted {
        conn,
        _permit: permit,
    })
}
