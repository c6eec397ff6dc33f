//! The SQLite connection that writes usage flushes, on a thread of its own at the lowest
//! CPU priority (nice 19; Linux).
//!
//! SQLite runs in keygate's process: a flush's statements are CPU work on the same CPUs as
//! the requests. At nice 19 a request's thread that wakes while a flush runs gets the CPU
//! within microseconds instead of after the writer's time slice; the flush gets what the
//! requests leave, and still a small share (about 1.5 % against one busy thread at nice 0)
//! when they leave nothing, so its short transactions cannot hold SQLite's write lock for
//! long. (`SCHED_IDLE` would preempt as well, with a 5 times smaller share.)

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions};

/// The nice value of the usage writer's thread.
const NICE: i32 = 19;

/// One connection: SQLite's single writer serialises usage writes anyway. Opened on first
/// use, on a thread named `keygate-usage` (as `top -H` shows it).
pub(crate) fn usage_pool(options: &SqliteConnectOptions) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| Box::pin(lower_worker_priority(conn)))
        .connect_lazy_with(
            options
                .clone()
                .thread_name(|n| format!("keygate-usage-{n}")),
        )
}

/// Lowers the priority of the thread that runs `conn`'s statements (sqlx runs each SQLite
/// connection on a thread of its own): SQLite calls a progress handler on that thread while
/// it steps a statement.
async fn lower_worker_priority(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    on_worker_thread(conn, lower_this_thread).await
}

/// Runs `f` once on `conn`'s worker thread.
async fn on_worker_thread(
    conn: &mut SqliteConnection,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), sqlx::Error> {
    let mut f = Some(f);
    conn.lock_handle().await?.set_progress_handler(1, move || {
        if let Some(f) = f.take() {
            f();
        }
        true
    });
    // A few virtual machine steps with a jump, where SQLite calls the progress handler.
    let stepped = sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) \
         SELECT count(*) FROM n",
    )
    .execute(&mut *conn)
    .await;
    conn.lock_handle().await?.remove_progress_handler();
    stepped.map(|_| ())
}

#[cfg(target_os = "linux")]
fn lower_this_thread() {
    // Raising one's own nice value needs no privilege; should it fail, the thread keeps
    // its priority and only the latency the flush adds is larger.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
        tracing::debug!(error = %e, "cannot lower the usage writer's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::str::FromStr;

    async fn nice_of_worker(pool: SqlitePool) -> i32 {
        let mut conn = pool.acquire().await.unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        on_worker_thread(&mut conn, move || {
            let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
            let _ = tx.send(nice.unwrap());
        })
        .await
        .unwrap();
        rx.try_recv().unwrap()
    }

    /// The usage pool's connection runs its statements at nice 19; another pool's threads
    /// keep the process's priority.
    #[tokio::test]
    async fn the_usage_connection_runs_at_the_lowest_priority() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let own = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(nice_of_worker(usage_pool(&options)).await, NICE);
        let other = SqlitePoolOptions::new().connect_lazy_with(options);
        assert_eq!(nice_of_worker(other).await, own);
    }
}
