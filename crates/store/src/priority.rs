//! CPU priority for background work.
//!
//! Bulk work — purge passes, eventual cascades, outbox clean-up, search indexing — runs on
//! threads in the idle scheduling class (Linux `SCHED_IDLE`): the kernel gives them only
//! the CPU time no normal thread wants, and a request handler that wakes up preempts
//! them at once. So a million-row purge pass takes the machine's spare cycles, not the
//! live readers' ones. Threads started from such a thread inherit its class.

/// Moves the calling thread into the idle scheduling class (on other systems: the
/// lowest priority). Best effort: a refusal is logged and the thread runs as before.
pub fn lower_current_thread() {
    use thread_priority::{ThreadPriority, ThreadSchedulePolicy};
    #[cfg(target_os = "linux")]
    let policy = ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Idle);
    #[cfg(not(target_os = "linux"))]
    let policy = ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Other);
    let result = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        policy,
    );
    if let Err(e) = result {
        tracing::warn!(error = ?e, "could not lower a background thread's CPU priority; it competes with requests");
    }
}

/// Whether the calling thread is in the idle scheduling class (for tests).
#[must_use]
pub fn current_thread_is_background() -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            thread_priority::thread_schedule_policy(),
            Ok(thread_priority::ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Idle))
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
