//! The standard `process_*` series, read from /proc on each scrape: CPU time, resident memory,
//! open and maximum descriptors, start time.
use crate::exposition::header;
use std::fmt::Write;

/// The kernel reports CPU times in /proc in USER_HZ ticks, fixed at 100 for user space on Linux
/// whatever the kernel's own tick rate (the Prometheus Go client's procfs assumes the same).
const USER_HZ: f64 = 100.0;

/// What the kernel says about this process; each field is `None` where /proc does not have it
/// (not Linux, or a field it could not parse), and its series is then left out.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Read on every scrape: a handful of small /proc files, no state kept between scrapes.
    pub(crate) fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let times = stat.as_deref().and_then(parse_stat);
        let btime = boot.as_deref().and_then(parse_boot_time);
        Self {
            cpu_seconds: times.map(|t| t.cpu_seconds),
            resident_bytes: status.as_deref().and_then(parse_rss_bytes),
            open_fds,
            max_fds: limits.as_deref().and_then(parse_max_fds),
            start_time_seconds: times
                .zip(btime)
                .map(|(t, b)| b as f64 + t.start_ticks as f64 / USER_HZ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct StatTimes {
    cpu_seconds: f64,
    /// Clock ticks after boot at which the process started.
    start_ticks: u64,
}

/// `/proc/self/stat`: user and system time are fields 14 and 15, the start time field 22
/// (proc(5)). The command name (field 2) may hold spaces and parentheses, so count from the
/// last `)`.
fn parse_stat(stat: &str) -> Option<StatTimes> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    Some(StatTimes {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        start_ticks: start,
    })
}

/// `VmRSS:   12345 kB` in `/proc/self/status` (in kB whatever the page size).
fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let kb: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kb * 1024)
}

/// The soft limit on the `Max open files` line of `/proc/self/limits`; `unlimited` has no number
/// and is left out.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime N` in `/proc/stat`: the boot time in seconds since the Unix epoch.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The standard `process_*` series (the names every Prometheus client library uses, so stock
/// dashboards and alerts work), with this node's labels like every other series.
pub(crate) fn render_process(o: &mut String, base: &str, p: &ProcessStats) {
    let series: [(&str, &str, &str, Option<String>); 5] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds.map(|v| v.to_string()),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v.to_string()),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.map(|v| v.to_string()),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
            p.max_fds.map(|v| v.to_string()),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            p.start_time_seconds.map(|v| v.to_string()),
        ),
    ];
    for (name, kind, help, value) in series {
        if let Some(v) = value {
            header(o, name, kind, help);
            let _ = writeln!(o, "{name}{{{base}}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_into_process_stats() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (herald (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 8 0 123456 1000000 900 18446744073709551615 0";
        assert_eq!(
            parse_stat(stat),
            Some(StatTimes {
                cpu_seconds: 3.0,
                start_ticks: 123_456
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        let status = "Name:\therald\nVmPeak:\t  99999 kB\nVmRSS:\t   2048 kB\nThreads:\t8\n";
        assert_eq!(parse_rss_bytes(status), Some(2048 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn process_series_render_only_what_was_read() {
        let mut o = String::new();
        let p = ProcessStats {
            cpu_seconds: Some(1.5),
            open_fds: Some(12),
            ..ProcessStats::default()
        };
        render_process(&mut o, "node=\"n\"", &p);
        assert!(
            o.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{o}"
        );
        assert!(
            o.contains("process_cpu_seconds_total{node=\"n\"} 1.5\n"),
            "{o}"
        );
        assert!(o.contains("process_open_fds{node=\"n\"} 12\n"), "{o}");
        assert!(!o.contains("process_max_fds"), "{o}");
        assert!(!o.contains("process_resident_memory_bytes"), "{o}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_all_five_process_series() {
        let _file = std::fs::File::open("/proc/self/stat").expect("open");
        let p = ProcessStats::read();
        let open = p.open_fds.expect("open fds");
        assert!(open >= 1, "the file above is open: {p:?}");
        assert!(p.max_fds.expect("max fds") >= open, "{p:?}");
        assert!(p.resident_bytes.expect("rss") > 0, "{p:?}");
        assert!(p.cpu_seconds.expect("cpu") >= 0.0, "{p:?}");
        assert!(p.start_time_seconds.expect("start") > 0.0, "{p:?}");
        let text = crate::metrics::metrics().render("n", "r");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("\n{name}{{node=\"n\",role=\"r\"}} ")),
                "{name} missing from\n{text}"
            );
        }
    }
}
