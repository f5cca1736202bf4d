//! CPU and memory of the stack's processes and of the machine, from /proc.
//!
//! A process group is named by the operator (`ingest`, `postgres`, ...) and
//! is either fixed pids or every process with a given name (re-resolved at
//! each sample, so PostgreSQL backends that start mid-run are counted).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// Linux reports utime/stime in USER_HZ, which is 100 on every architecture
/// the kernel exposes to user space (sysconf(_SC_CLK_TCK) would need unsafe).
pub const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime (clock ticks) from the contents of `/proc/<pid>/stat`.
/// The command name may hold spaces and parentheses, so fields are counted
/// after the LAST `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), so utime (14) and stime (15)
    // are at indices 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB from the contents of `/proc/<pid>/status` (absent for kernel threads and zombies).
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Pss in KiB from `/proc/<pid>/smaps_rollup`: resident memory with shared
/// pages divided among their users, so a group's sum does not count
/// PostgreSQL's shared buffers once per backend as the RSS sum does.
pub fn parse_pss_kib(rollup: &str) -> Option<u64> {
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The three load averages from `/proc/loadavg`.
pub fn parse_loadavg(s: &str) -> Option<[f64; 3]> {
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// (busy, total) jiffies of all CPUs from the first line of `/proc/stat`.
/// Idle and iowait count as not busy.
pub fn parse_machine_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Does a process whose `comm` and `cmdline` are given match `name`? `comm` is
/// cut to 15 bytes by the kernel (`fleetwatch-inge`), so argv[0]'s base name
/// is checked too.
pub fn matches_name(comm: &str, cmdline: &[u8], name: &str) -> bool {
    let comm = comm.trim_end();
    if comm == name || (name.len() > 15 && name.as_bytes().get(..15) == Some(comm.as_bytes())) {
        return true;
    }
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    // PostgreSQL rewrites its argv ("postgres: 15/main: writer"); the first word is the name.
    let first = argv0.split_whitespace().next().unwrap_or_default();
    let base = first
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(':');
    base == name
}

/// Which processes a group is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pids(Vec<u32>),
    Name(String),
}

/// `label=1234,1235` or `label=process-name`.
pub fn parse_proc_spec(spec: &str) -> Result<(String, Selector), String> {
    let (label, what) = spec
        .split_once('=')
        .ok_or_else(|| format!("--proc {spec:?}: expected LABEL=PID[,PID] or LABEL=NAME"))?;
    if label.is_empty() || what.is_empty() {
        return Err(format!(
            "--proc {spec:?}: label and value must not be empty"
        ));
    }
    let pids: Result<Vec<u32>, _> = what.split(',').map(str::parse).collect();
    let sel = match pids {
        Ok(p) => Selector::Pids(p),
        Err(_) => Selector::Name(what.to_string()),
    };
    Ok((label.to_string(), sel))
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Every pid whose name matches.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(comm) = read(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if matches_name(&comm, &cmdline, name) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// CPU ticks, RSS and PSS (KiB) of one process now; None when it is gone.
pub fn sample_pid(pid: u32) -> Option<(u64, u64, u64)> {
    let ticks = parse_stat_cpu_ticks(&read(format!("/proc/{pid}/stat"))?)?;
    let rss = read(format!("/proc/{pid}/status"))
        .and_then(|s| parse_vmrss_kib(&s))
        .unwrap_or(0);
    let pss = read(format!("/proc/{pid}/smaps_rollup"))
        .and_then(|s| parse_pss_kib(&s))
        .unwrap_or(rss);
    Some((ticks, rss, pss))
}

pub fn loadavg() -> Option<[f64; 3]> {
    parse_loadavg(&read("/proc/loadavg")?)
}

pub fn machine_cpu() -> Option<(u64, u64)> {
    parse_machine_cpu(&read("/proc/stat")?)
}

#[derive(Debug, Default, Clone)]
struct PidTrack {
    first_ticks: u64,
    last_ticks: u64,
}

/// CPU and RSS of one group over a measurement window.
#[derive(Debug)]
pub struct Group {
    pub label: String,
    pub selector: Selector,
    pids: BTreeMap<u32, PidTrack>,
    samples: u32,
    rss_sum_kib: u64,
    rss_peak_kib: u64,
    rss_last_kib: u64,
    pss_peak_kib: u64,
}

/// What the report shows for a group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupUsage {
    pub label: String,
    pub pids: Vec<u32>,
    /// CPU time over the window divided by its wall time, in % of ONE core.
    pub cpu_percent: f64,
    pub cpu_seconds: f64,
    pub rss_avg_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    /// Peak of the summed PSS (shared pages split among processes): the
    /// honest figure for a multi-process group such as PostgreSQL.
    pub pss_peak_mib: f64,
}

impl Group {
    pub fn new(label: impl Into<String>, selector: Selector) -> Self {
        Self {
            label: label.into(),
            selector,
            pids: BTreeMap::new(),
            samples: 0,
            rss_sum_kib: 0,
            rss_peak_kib: 0,
            rss_last_kib: 0,
            pss_peak_kib: 0,
        }
    }

    fn current_pids(&self) -> Vec<u32> {
        match &self.selector {
            Selector::Pids(p) => p.clone(),
            Selector::Name(n) => pids_named(n),
        }
    }

    /// Takes one sample. The first sample is the baseline: a pid seen later
    /// started during the window, so all its CPU time counts.
    pub fn sample(&mut self) {
        let first = self.samples == 0;
        let mut rss = 0;
        let mut pss = 0;
        for pid in self.current_pids() {
            let Some((ticks, kib, pss_kib)) = sample_pid(pid) else {
                continue;
            };
            rss += kib;
            pss += pss_kib;
            let t = self.pids.entry(pid).or_insert_with(|| PidTrack {
                first_ticks: if first { ticks } else { 0 },
                last_ticks: ticks,
            });
            t.last_ticks = ticks;
        }
        self.samples += 1;
        self.rss_sum_kib += rss;
        self.rss_peak_kib = self.rss_peak_kib.max(rss);
        self.rss_last_kib = rss;
        self.pss_peak_kib = self.pss_peak_kib.max(pss);
    }

    pub fn usage(&self, wall_secs: f64) -> GroupUsage {
        let ticks: u64 = self
            .pids
            .values()
            .map(|t| t.last_ticks.saturating_sub(t.first_ticks))
            .sum();
        let cpu_seconds = ticks as f64 / TICKS_PER_SEC;
        let mib = |kib: u64| kib as f64 / 1024.0;
        GroupUsage {
            label: self.label.clone(),
            pids: self.pids.keys().copied().collect(),
            cpu_percent: if wall_secs > 0.0 {
                100.0 * cpu_seconds / wall_secs
            } else {
                0.0
            },
            cpu_seconds,
            rss_avg_mib: if self.samples > 0 {
                mib(self.rss_sum_kib) / self.samples as f64
            } else {
                0.0
            },
            rss_peak_mib: mib(self.rss_peak_kib),
            rss_end_mib: mib(self.rss_last_kib),
            pss_peak_mib: mib(self.pss_peak_kib),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        let stat = "1234 (fleetwatch-inge) S 1 1234 1234 0 -1 4194304 5000 0 0 0 250 75 0 0 20 0 9 0 100 123456 789 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        // A name with spaces and a ')' inside.
        let odd = "7 (a b) c) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_cpu_ticks(odd), Some(33));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn vmrss_and_loadavg() {
        let status = "Name:\tpostgres\nVmPeak:\t  222 kB\nVmRSS:\t   20480 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(status), Some(20480));
        assert_eq!(parse_vmrss_kib("Name:\tkthreadd\n"), None);
        assert_eq!(
            parse_pss_kib(
                "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:    900 kB\nPss:    300 kB\nPss_Anon: 10 kB\n"
            ),
            Some(300)
        );
        assert_eq!(
            parse_loadavg("1.71 1.46 1.03 3/512 19579\n"),
            Some([1.71, 1.46, 1.03])
        );
        assert_eq!(parse_loadavg("1.0"), None);
    }

    #[test]
    fn machine_cpu_busy_and_total() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_cpu(stat), Some((160, 1000)));
        assert_eq!(parse_machine_cpu("intr 1 2"), None);
    }

    #[test]
    fn names_match_comm_truncation_and_argv0() {
        assert!(matches_name(
            "fleetwatch-inge\n",
            b"/x/target/release/fleetwatch-ingest\0",
            "fleetwatch-ingest"
        ));
        assert!(matches_name("fleetwatch-inge", b"", "fleetwatch-ingest"));
        assert!(!matches_name(
            "fleetwatch-inge",
            b"",
            "fleetwatch-persistence"
        ));
        assert!(matches_name(
            "postgres",
            b"postgres: 15/main: checkpointer \0",
            "postgres"
        ));
        assert!(matches_name(
            "tokio-runtime-w",
            b"/usr/bin/java\0-cp\0libs/*\0kafka.Kafka\0",
            "java"
        ));
        assert!(!matches_name("bash", b"bash\0-c\0java\0", "java"));
    }

    #[test]
    fn proc_specs() {
        assert_eq!(
            parse_proc_spec("ingest=12,13"),
            Ok(("ingest".into(), Selector::Pids(vec![12, 13])))
        );
        assert_eq!(
            parse_proc_spec("pg=postgres"),
            Ok(("pg".into(), Selector::Name("postgres".into())))
        );
        assert!(parse_proc_spec("nolabel").is_err());
        assert!(parse_proc_spec("=1").is_err());
    }

    #[test]
    fn group_samples_this_process() {
        let mut g = Group::new("me", Selector::Pids(vec![std::process::id()]));
        g.sample();
        // Burn a little CPU so the delta can be non-zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        g.sample();
        let u = g.usage(1.0);
        assert_eq!(u.pids, [std::process::id()]);
        assert!(u.rss_peak_mib > 0.0 && u.rss_end_mib > 0.0);
        assert!(u.cpu_seconds >= 0.0);
        let gone = Group::new("gone", Selector::Pids(vec![u32::MAX]));
        assert_eq!(gone.usage(1.0).cpu_percent, 0.0);
    }
}
