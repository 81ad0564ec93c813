//! Peak memory measurement.

/// How [`peak_rss_bytes`] measures, for `metrics.json`.
pub const PEAK_RSS_METHOD: &str = "VmHWM from /proc/self/status: peak resident set size of the whole process \
since it started (model, optimizer state, data, teacher, evaluation), read at the end of the run";

/// How the device-memory figure of GPU runs is measured, for `metrics.json`.
pub const DEVICE_MEMORY_METHOD: &str = "bytes reserved by the CubeCL allocator's memory pools on the \
training device after training and the last evaluation (pools grow to the largest working set and are \
kept, so this is the peak reservation; the process's host memory is in peak_rss_bytes); compare with \
PyTorch's torch.cuda.max_memory_reserved, not max_memory_allocated";

/// Peak resident set size of this process in bytes (`VmHWM`), or `None` where `/proc` is absent.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm_line() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn reads_own_peak_on_linux() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss_bytes().unwrap() > 1024 * 1024);
        }
    }
}
