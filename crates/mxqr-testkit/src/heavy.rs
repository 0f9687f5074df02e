//! Keeping the heavy suites apart. The suites that load the machine (several `mxqr serve`
//! processes behind a proxy, trace-level logging, a real Synapse) or that time fail-overs
//! used to be test binaries of their own, which cargo runs one after another. In one binary
//! they take this lock, so that they still never run side by side.

use tokio::sync::{Mutex, MutexGuard};

static HEAVY: Mutex<()> = Mutex::const_new(());

/// Waits until no other heavy test runs; the guard keeps the others out until dropped.
pub async fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// [`heavy`] for a test outside an async runtime.
pub fn heavy_blocking() -> MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}
