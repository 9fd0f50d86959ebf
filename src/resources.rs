//! The process's resource use and the container's limits: resident memory (from the
//! `metrics-process` collector, the same figure as `process_resident_memory_bytes`) and the
//! memory limit the kernel will enforce (cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`).

use std::path::Path;

const CGROUP_V2_MAX: &str = "/sys/fs/cgroup/memory.max";
const CGROUP_V1_LIMIT: &str = "/sys/fs/cgroup/memory/memory.limit_in_bytes";
/// cgroup v1 reports "no limit" as a huge number (page-rounded i64::MAX); anything above this is
/// no limit.
const UNLIMITED_ABOVE: u64 = 1 << 60;

/// Resident memory of this process in bytes; None where the platform does not say.
pub fn resident_memory_bytes() -> Option<u64> {
    metrics_process::collector::collect().resident_memory_bytes
}

/// The container's memory limit in bytes; None when there is none (or no cgroup to read).
pub fn container_memory_limit() -> Option<u64> {
    read_limit(Path::new(CGROUP_V2_MAX)).or_else(|| read_limit(Path::new(CGROUP_V1_LIMIT)))
}

fn read_limit(path: &Path) -> Option<u64> {
    parse_limit(&std::fs::read_to_string(path).ok()?)
}

/// `max` (v2) or a huge value (v1) mean no limit.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&limit| limit > 0 && limit < UNLIMITED_ABOVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_both_cgroup_versions() {
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(
            parse_limit("9223372036854771712\n"),
            None,
            "cgroup v1 without a limit"
        );
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(resident_memory_bytes().is_some_and(|bytes| bytes > 1 << 20));
    }
}
