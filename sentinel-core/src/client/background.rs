//! The client's background tasks: the long-lived ones (the heartbeat, retention), started on
//! first use and started again when the runtime the last one ran on has shut down; and the
//! short-lived ones that finish what a call could not (a transition to send again, a lost
//! claim or lease to give up), each trying for about a minute.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::Result;
use crate::key::RecordId;
use crate::token::FencingToken;

/// One background task of the client, running at most once at a time.
#[derive(Debug, Default)]
pub(crate) struct Background {
    /// Set while a task is spawned and not yet finished or dropped.
    running: Arc<AtomicBool>,
}

impl Background {
    /// Spawns `task()` on the current runtime unless a task spawned earlier still runs. A task
    /// whose runtime shut down was dropped with it, so the next call spawns a new one here.
    /// Without a runtime, nothing: whether it spawned.
    pub(crate) fn ensure<F>(&self, task: impl FnOnce() -> F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.running.swap(true, Ordering::SeqCst) {
            return false;
        }
        let running = Running(Arc::clone(&self.running));
        let task = task();
        runtime.spawn(async move {
            let _running = running;
            task.await;
        });
        true
    }
}

/// Clears the flag when the task ends, or when its runtime drops it unfinished.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Spawns a task that sends one transition of `token`'s record `id` (`send(id)`; `what` names it
/// in the logs), trying again while the store cannot be reached (about a minute in all); a
/// refusal (a reconciliation fenced the token, say) ends it and is logged.
pub(crate) fn send_in_background<F, Fut>(
    what: &'static str,
    id: RecordId,
    token: FencingToken,
    mut send: F,
) where
    F: FnMut(RecordId) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let recorded = keep_trying(|| {
            let sent = send(id.clone());
            async {
                match sent.await {
                    Ok(()) => Attempt::Done,
                    Err(error) if error.is_transient() => Attempt::Again,
                    Err(error) => {
                        tracing::warn!(%error, %id, %token, what, "refused");
                        Attempt::Done
                    }
                }
            }
        })
        .await;
        if recorded {
            tracing::info!(%id, %token, what, "sent in the background");
        } else {
            tracing::warn!(%id, %token, what, "not recorded: the store could not be reached");
        }
    });
}

/// What one background attempt came to.
enum Attempt {
    /// Nothing left to do.
    Done,
    /// The store could not be reached: try again later.
    Again,
}

/// Runs `attempt`, and again after a pause while it answers [`Attempt::Again`], up to
/// [`BACKGROUND_ATTEMPTS`] times in all; pauses start at [`FIRST_PAUSE`] and double up to 5 s.
/// Whether it got through.
async fn keep_trying<F, Fut>(mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut pause = FIRST_PAUSE;
    for tried in 1..=BACKGROUND_ATTEMPTS {
        if let Attempt::Done = attempt().await {
            return true;
        }
        if tried < BACKGROUND_ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
    false
}

/// The first pause of a background task: before it looks for a lost claim (which may still be on
/// its way), and between its first two attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// How many times a background task tries before giving up (about a minute in all).
const BACKGROUND_ATTEMPTS: u32 = 15;

/// When every attempt of a call that grants something (a claim, a lease) failed, one may still
/// have been applied, a grant nobody knows of: spawns `forget()` to look for it and give it up.
/// Without a runtime, nothing (the grant expires).
pub(crate) fn forget_if_unanswered<T, Fut>(answer: &Result<T>, forget: impl FnOnce() -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    if let Err(error) = answer
        && error.is_transient()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(forget());
    }
}

/// Waits [`FIRST_PAUSE`] (what it looks for may still be on its way), then runs `look` at every
/// step of the whole schedule of [`keep_trying`]: finding what it looks for once is no reason to
/// stop, since an attempt still on its way may land later.
pub(crate) async fn look_for_a_while<F, Fut>(mut look: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::time::sleep(FIRST_PAUSE).await;
    keep_trying(|| {
        let looked = look();
        async {
            looked.await;
            Attempt::Again
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn spawns_once_while_running_and_again_after_its_runtime_is_gone() {
        let background = Background::default();
        assert!(!background.ensure(|| async {}), "no runtime, no task");
        let first = runtime();
        first.block_on(async {
            assert!(background.ensure(std::future::pending::<()>));
            assert!(
                !background.ensure(std::future::pending::<()>),
                "already running"
            );
        });
        drop(first);
        runtime().block_on(async {
            assert!(
                background.ensure(std::future::pending::<()>),
                "the first task died with its runtime"
            );
        });
    }

    #[test]
    fn spawns_again_once_the_task_has_ended() {
        let background = Background::default();
        runtime().block_on(async {
            assert!(background.ensure(|| async {}));
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            assert!(background.ensure(|| async {}), "the first task ended");
        });
    }
}
