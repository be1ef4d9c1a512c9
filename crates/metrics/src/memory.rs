//! Process memory, from sysinfo or any other [`MemorySource`].

use std::sync::{Mutex, PoisonError};

/// Where the process's resident memory is read from.
pub trait MemorySource: Send + Sync {
    /// The resident set size in bytes, or why it cannot be read.
    fn rss_bytes(&self) -> Result<u64, String>;
}

/// This process's memory, read through sysinfo.
pub struct ProcessMemory {
    state: Result<Mutex<(sysinfo::System, sysinfo::Pid)>, String>,
}

impl std::fmt::Debug for ProcessMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessMemory").field("available", &self.state.is_ok()).finish()
    }
}

impl Default for ProcessMemory {
    fn default() -> Self {
        ProcessMemory::new()
    }
}

impl ProcessMemory {
    /// Reads this process; when the platform gives no access, every read
    /// says why instead.
    #[must_use]
    pub fn new() -> ProcessMemory {
        let state = sysinfo::get_current_pid().map_err(|e| format!("cannot find this process: {e}")).and_then(|pid| {
            sysinfo::System::new().map(|s| Mutex::new((s, pid))).map_err(|e| format!("sysinfo unavailable: {e}"))
        });
        ProcessMemory { state }
    }
}

impl MemorySource for ProcessMemory {
    fn rss_bytes(&self) -> Result<u64, String> {
        let state = self.state.as_ref().map_err(Clone::clone)?;
        let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        let (system, pid) = &mut *guard;
        let pid = *pid;
        system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            false,
            sysinfo::ProcessRefreshKind::nothing().with_memory(),
        );
        system.process(pid).map(sysinfo::Process::memory).ok_or_else(|| "this process is not visible".to_owned())
    }
}

/// A source that never has data: for platforms without access, and tests.
#[derive(Debug, Clone, Default)]
pub struct NoMemory(pub String);

impl MemorySource for NoMemory {
    fn rss_bytes(&self) -> Result<u64, String> {
        Err(if self.0.is_empty() { "memory statistics are unavailable".to_owned() } else { self.0.clone() })
    }
}

/// Memory samples so far: the first (baseline), the latest and the peak.
#[derive(Debug, Default)]
pub(crate) struct MemoryTrack {
    state: Mutex<Option<(u64, u64, u64)>>,
}

impl MemoryTrack {
    /// Takes a sample; returns (current, peak, baseline) or why there is none.
    pub(crate) fn sample(&self, source: &dyn MemorySource) -> Result<(u64, u64, u64), String> {
        let current = source.rss_bytes()?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (baseline, peak) = match *state {
            Some((baseline, _, peak)) => (baseline, peak.max(current)),
            None => (current, current),
        };
        *state = Some((baseline, current, peak));
        Ok((current, peak, baseline))
    }

    pub(crate) fn reset(&self) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
