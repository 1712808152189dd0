//! Config listeners: which held long-poll requests wait on which config, and one task that
//! wakes them when a committed batch touches a config's content key.
//!
//! One subscription to the node's commits serves every waiting request, so the cost of a write
//! is one lookup per changed config key, not one per waiting client. A wake-up only says "look
//! again": the woken request re-reads its configs through the checked etcd operations, with its
//! caller's permissions, before it answers anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, broadcast};

use mast_server::Node;

/// Waiting requests by the content key they hold.
#[derive(Default)]
pub struct ListenHub {
    waiters: Mutex<HashMap<Vec<u8>, Vec<Weak<Notify>>>>,
}

/// A request's registration: woken when any of its keys changes; unregistered when dropped.
pub struct Registration {
    hub: Arc<ListenHub>,
    keys: Vec<Vec<u8>>,
    notify: Arc<Notify>,
}

impl Registration {
    /// Completes when one of the keys changed since the registration (or since the last
    /// completed wait): a permit is kept, so a change between registering and waiting is not
    /// lost.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiters = self.hub.lock();
        for key in &self.keys {
            if let Some(list) = waiters.get_mut(key) {
                list.retain(|w| w.strong_count() > 0 && !ptr_eq(w, &self.notify));
                if list.is_empty() {
                    waiters.remove(key);
                }
            }
        }
    }
}

fn ptr_eq(w: &Weak<Notify>, n: &Arc<Notify>) -> bool {
    std::ptr::eq(w.as_ptr(), Arc::as_ptr(n))
}

impl ListenHub {
    /// A hub fed by `node`'s commits until the node shuts down.
    pub fn start(node: Arc<Node>) -> Arc<ListenHub> {
        let hub = Arc::new(ListenHub::default());
        let mut rx = node.subscribe_commits();
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = node.shutting_down() => return,
                };
                let Some(hub) = weak.upgrade() else { return };
                match next {
                    Ok(batch) if !batch.gap => {
                        // A config's content, or one of its gray releases, changed.
                        let keys: Vec<Vec<u8>> = batch
                            .events
                            .iter()
                            .filter_map(|e| e.kv.as_ref())
                            .filter_map(|kv| mast_model::gray::content_key_of(&kv.key))
                            .collect();
                        hub.wake(keys.iter().map(Vec::as_slice));
                    }
                    // Changes were missed (a snapshot replaced the store, or this task lagged):
                    // every waiting request looks again.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => hub.wake_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<Weak<Notify>>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request waiting on the content `keys`.
    pub fn register(self: &Arc<Self>, keys: Vec<Vec<u8>>) -> Registration {
        let notify = Arc::new(Notify::new());
        {
            let mut waiters = self.lock();
            for key in &keys {
                waiters
                    .entry(key.clone())
                    .or_default()
                    .push(Arc::downgrade(&notify));
            }
        }
        Registration {
            hub: self.clone(),
            keys,
            notify,
        }
    }

    fn wake<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let waiters = self.lock();
        if waiters.is_empty() {
            return;
        }
        for key in keys {
            for w in waiters.get(key).into_iter().flatten() {
                if let Some(n) = w.upgrade() {
                    n.notify_one();
                }
            }
        }
    }

    fn wake_all(&self) {
        for w in self.lock().values().flatten() {
            if let Some(n) = w.upgrade() {
                n.notify_one();
            }
        }
    }

    /// How many keys have waiting requests (for tests and metrics).
    pub fn watched_keys(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_before_the_wait_is_kept_and_drop_unregisters() {
        let hub = Arc::new(ListenHub::default());
        let reg = hub.register(vec![b"/configs/a".to_vec(), b"/configs/b".to_vec()]);
        assert_eq!(hub.watched_keys(), 2);
        hub.wake([&b"/configs/c"[..]].into_iter());
        hub.wake([&b"/configs/b"[..]].into_iter());
        tokio::time::timeout(std::time::Duration::from_secs(5), reg.changed())
            .await
            .expect("the change before the wait wakes it");
        drop(reg);
        assert_eq!(hub.watched_keys(), 0);
    }
}
