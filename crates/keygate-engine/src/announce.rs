//! Key changes announced to caches outside this process (keygate-tower's remote mode, or a
//! client in another language on `GET /v1/key-changes`), by key id: such a cache does not
//! know the pepper, so it cannot recognise a digest, and a digest must not leave the server.
//!
//! Announcements are numbered in one sequence per process, with no gap: a subscriber that
//! sees a number skipped knows it missed something. A subscriber too slow to keep up is
//! told to resync (drop everything) instead of being sent a partial history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keygate_core::KeyDigest;
use keygate_store::{Change, Store};
use tokio::sync::{broadcast, mpsc};

/// Announcements held for a subscriber that is behind; further behind, it resyncs.
const BACKLOG: usize = 1024;
/// Changes waiting for their key id to be looked up; more at once (a bulk import) are
/// announced as one resync.
const PENDING: usize = 256;

/// What a remote cache must drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// The key with this id changed (revoked, rotated, edited, created): drop its verdicts.
    Key(String),
    /// Changes may have been missed: drop every verdict.
    Resync(ResyncReason),
}

/// Why a resync is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// The start of a subscription: what happened before it is unknown to the subscriber.
    Connected,
    /// The subscriber fell behind and announcements were dropped for it.
    Lagged,
    /// The store's change feed restarted (a lost database connection): changes made
    /// meanwhile are unknown.
    FeedRestarted,
    /// A change whose key could not be looked up, or too many changes at once.
    Unresolved,
    /// An account changed plan: the rate limits of all its keys may have changed.
    PlanChanged,
}

impl ResyncReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Connected => "connected",
            ResyncReason::Lagged => "lagged",
            ResyncReason::FeedRestarted => "feed_restarted",
            ResyncReason::Unresolved => "unresolved",
            ResyncReason::PlanChanged => "plan_changed",
        }
    }
}

/// One numbered announcement.
#[derive(Clone, Debug)]
pub struct Numbered {
    pub seq: u64,
    pub announcement: Announcement,
}

/// The sending side, one per engine.
pub(crate) struct Announcer {
    sender: broadcast::Sender<Numbered>,
    /// The number of the last announcement sent.
    head: AtomicU64,
    /// Numbering and sending happen together, so the numbers go out in order; a
    /// subscription taken under it starts exactly after `head`.
    order: Mutex<()>,
    /// Digests waiting for their key id (`None` until the change listener starts).
    pending: Mutex<Option<mpsc::Sender<Change>>>,
}

impl Announcer {
    pub(crate) fn new() -> Announcer {
        Announcer {
            sender: broadcast::channel(BACKLOG).0,
            head: AtomicU64::new(0),
            order: Mutex::new(()),
            pending: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn announce(&self, announcement: Announcement) {
        let _order = self.lock();
        let seq = self.head.fetch_add(1, Ordering::Relaxed) + 1;
        // No subscriber: nobody to tell, and the number still counts.
        let _ = self.sender.send(Numbered { seq, announcement });
    }

    /// The number of the last announcement, and a receiver of every later one.
    pub(crate) fn subscribe(&self) -> (u64, broadcast::Receiver<Numbered>) {
        let _order = self.lock();
        (self.head.load(Ordering::Relaxed), self.sender.subscribe())
    }

    pub(crate) fn head(&self) -> u64 {
        let _order = self.lock();
        self.head.load(Ordering::Relaxed)
    }

    /// Hands a change heard from the store to the resolver, when someone listens.
    pub(crate) fn heard(&self, change: Change) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = pending.as_ref() {
            if pending.try_send(change).is_err() {
                // Full: the resolver is far behind (a bulk import). A resync covers it.
                self.announce(Announcement::Resync(ResyncReason::Unresolved));
            }
        }
    }

    /// Starts the task that turns digests into key ids (one store read per change, only
    /// while someone listens). It ends when `announcer` is dropped.
    pub(crate) fn spawn_resolver(
        announcer: &Arc<Announcer>,
        store: Arc<dyn Store>,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel(PENDING);
        *announcer.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let weak = Arc::downgrade(announcer);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let announcement = match change {
                    Change::Resync => Announcement::Resync(ResyncReason::FeedRestarted),
                    Change::Key(digest) => key_id_of(store.as_ref(), &digest).await,
                };
                let Some(announcer) = weak.upgrade() else {
                    return;
                };
                announcer.announce(announcement);
            }
        })
    }
}

async fn key_id_of(store: &dyn Store, digest: &KeyDigest) -> Announcement {
    match store.find_key_by_digest(digest).await {
        Ok(Some(record)) => Announcement::Key(record.id),
        // Unknown (never stored) or unreadable: what changed cannot be named.
        Ok(None) => Announcement::Resync(ResyncReason::Unresolved),
        Err(e) => {
            tracing::warn!(error = %e, "cannot name a changed key; announcing a resync");
            Announcement::Resync(ResyncReason::Unresolved)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_no_gap_and_a_subscription_starts_after_the_head() {
        let announcer = Announcer::new();
        announcer.announce(Announcement::Key("key_1".into()));
        let (head, mut rx) = announcer.subscribe();
        assert_eq!(head, 1);
        announcer.announce(Announcement::Key("key_2".into()));
        announcer.announce(Announcement::Resync(ResyncReason::PlanChanged));
        let first = rx.try_recv().unwrap();
        let second = rx.try_recv().unwrap();
        assert_eq!(
            (first.seq, first.announcement),
            (2, Announcement::Key("key_2".into()))
        );
        assert_eq!(second.seq, 3);
        assert_eq!(announcer.head(), 3);
    }
}
