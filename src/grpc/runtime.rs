//! The gRPC server's own runtime: one thread, with a current-thread tokio scheduler.
//!
//! On the process's multi-thread runtime, hyper spawns a task per call and tokio wakes the other
//! worker to steal it, so every Get paid for cross-thread wake-ups (futex, idle-core exits) that
//! cost more than the lookup and the HTTP/2 framing together. On this thread the server answers
//! about twice the calls per second at half the CPU per call (h2load, before/after in
//! BENCHMARKS.md). One core is also what a sidecar is usually given. Ingest keeps its own threads and the admin server stays on the main
//! runtime, so neither competes with lookups for this thread.

use std::future::Future;
use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct ServingRuntime {
    handle: Handle,
    /// Dropped to let the thread finish.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServingRuntime {
    pub fn start() -> io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("grpc".into())
            // A current-thread runtime runs its spawned tasks while `block_on` does.
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `future` on the serving thread; the handle can be awaited and aborted from anywhere.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }
}

impl Drop for ServingRuntime {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
