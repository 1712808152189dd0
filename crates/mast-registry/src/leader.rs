//! The loop the registry's background work shares: follow the node's commits and act only
//! while this member leads, so each piece of work is done by one member of a cluster.

use std::sync::Arc;
use std::time::Duration;

use mast_proto::mvccpb::Event;
use mast_server::Node;
use tokio::sync::broadcast::error::RecvError;

/// How often the loop looks whether this member started or stopped leading.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(500);

/// Work done by the leader alone, driven by [`spawn`].
pub(crate) trait LeaderWork: Send + 'static {
    /// Look at everything: this member became leader, or commits were missed (a lagging
    /// subscription, a snapshot installed).
    fn everything(&mut self) -> impl Future<Output = ()> + Send;

    /// This member stopped leading.
    fn stop_leading(&mut self) {}

    /// Committed events, while leading, in revision order.
    fn events(&mut self, events: &[Event]) -> impl Future<Output = ()> + Send;
}

/// Runs `work` on `node`'s commits until the node shuts down.
pub(crate) fn spawn(node: Arc<Node>, mut work: impl LeaderWork) {
    tokio::spawn(async move {
        let mut commits = node.subscribe_commits();
        let mut leading = false;
        let mut tick = tokio::time::interval(LEADERSHIP_CHECK);
        let stop = node.clone();
        let stopping = stop.shutting_down();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                _ = &mut stopping => return,
                _ = tick.tick() => {
                    let now = node.is_leader();
                    if now && !leading {
                        work.everything().await;
                    } else if !now && leading {
                        work.stop_leading();
                    }
                    leading = now;
                }
                batch = commits.recv() => match batch {
                    Err(RecvError::Closed) => return,
                    _ if !leading => {}
                    Ok(batch) if !batch.gap => work.events(&batch.events).await,
                    Ok(_) | Err(RecvError::Lagged(_)) => work.everything().await,
                },
            }
        }
    });
}
