//! The client's background tasks (the heartbeat, retention): started on first use, and started
//! again when the runtime the last one ran on has shut down.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
