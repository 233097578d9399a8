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

/// Runs `f` with the calling background thread back in the normal scheduling class, then
/// returns it to the idle class: for a piece of background work that something urgent
/// waits for (the WAL's last checkpoint pass before a rewind, which the live writer would
/// otherwise do itself, at normal priority, while every write waits). Best effort: where
/// leaving the idle class is not permitted (an unprivileged process whose `RLIMIT_NICE`
/// does not allow it), `f` runs in the idle class.
pub fn urgently<T>(f: impl FnOnce() -> T) -> T {
    use thread_priority::{ThreadPriority, ThreadSchedulePolicy};
    let background = current_thread_is_background();
    if background {
        // Nice 0: the class and niceness every request's thread has.
        let raised = thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Os(thread_priority::ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Other),
        );
        if let Err(e) = raised {
            tracing::debug!(error = ?e, "cannot leave the idle class for urgent work");
        }
    }
    let value = f();
    if background {
        lower_current_thread();
    }
    value
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{current_thread_is_background, lower_current_thread, urgently};

    /// Whether this process may move a thread from the idle class back to the normal one
    /// (root may; an unprivileged process only as far as its `RLIMIT_NICE` allows).
    fn may_leave_the_idle_class() -> bool {
        std::thread::spawn(|| {
            lower_current_thread();
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                thread_priority::ThreadPriority::Os(thread_priority::ThreadPriorityOsValue::default()),
                thread_priority::ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Other),
            )
            .is_ok()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn urgent_work_leaves_the_idle_class_while_it_runs_and_only_then() {
        let permitted = may_leave_the_idle_class();
        std::thread::spawn(move || {
            lower_current_thread();
            assert!(current_thread_is_background());
            let inside = urgently(current_thread_is_background);
            assert_eq!(inside, !permitted, "in the idle class during urgent work");
            assert!(current_thread_is_background(), "back in the idle class after it");
        })
        .join()
        .unwrap();
        // A normal thread stays normal.
        assert!(!current_thread_is_background());
        assert!(!urgently(current_thread_is_background));
        assert!(!current_thread_is_background());
    }
}
