//! Resident memory from `/proc`: of one process (the merger), of workerd under `wrangler dev`;
//! and what an edge's Durable Objects hold on disk (the `--persist-to` directory).

use std::path::Path;

/// Resident memory of one process, KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: all of it.
    pub total: u64,
    /// `RssAnon`: the heap and other private memory (the merger's cache, SQLite's page
    /// caches).
    pub anon: u64,
    /// `RssFile`: mapped files in memory (the binary, a database file read through mmap).
    pub file: u64,
}

/// Resident memory of process `pid`; `None` if it is gone.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<Rss> {
    Some(Rss {
        total: vm_rss_kib(status)?,
        anon: status_kib(status, "RssAnon:")?,
        file: status_kib(status, "RssFile:")?,
    })
}

/// Resident memory of the `workerd` processes in process group `pgid` (wrangler's group,
/// which its workerd inherits), KiB; 0 if none is found.
pub fn workerd_rss_kib(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (comm, group) = comm_and_group(&stat)?;
            if group != pgid || comm != "workerd" {
                return None;
            }
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            vm_rss_kib(&status)
        })
        .sum()
}

/// The command name and process group of a `/proc/<pid>/stat` line:
/// `pid (comm) state ppid pgrp ...`; `comm` may hold spaces and parentheses, so the fields
/// are read after the last `)`.
fn comm_and_group(stat: &str) -> Option<(&str, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let group = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    Some((comm, group))
}

/// `VmRSS` of a `/proc/<pid>/status`, KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

/// The field `name` (with its colon) of a `/proc/<pid>/status`, KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes of Durable Object storage under a `--persist-to` directory: the objects' SQLite
/// files (`v3/do/<script>-<class>/<id>.sqlite` and their WAL), not workerd's own metadata.
pub fn object_storage_bytes(persist: &Path) -> u64 {
    let Ok(classes) = std::fs::read_dir(persist.join("v3/do")) else {
        return 0;
    };
    classes
        .flatten()
        .filter_map(|class| std::fs::read_dir(class.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| !f.file_name().to_string_lossy().starts_with("metadata"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_command_and_group() {
        let stat = "4242 (workerd) S 4200 4190 4190 0 -1 4194560 100";
        assert_eq!(comm_and_group(stat), Some(("workerd", 4190)));
        let odd = "7 (a (b) c) R 1 99 99 0";
        assert_eq!(comm_and_group(odd), Some(("a (b) c", 99)));
        assert_eq!(comm_and_group("garbage"), None);
    }

    #[test]
    fn status_gives_the_resident_set() {
        let status = "Name:\tworkerd\nVmPeak:\t 9000 kB\nVmRSS:\t  123456 kB\nThreads:\t8\n";
        assert_eq!(vm_rss_kib(status), Some(123_456));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
        let full = "VmRSS:\t  300 kB\nRssAnon:\t  200 kB\nRssFile:\t   90 kB\nRssShmem:\t 10 kB\n";
        assert_eq!(
            parse_rss(full),
            Some(Rss {
                total: 300,
                anon: 200,
                file: 90
            })
        );
        assert_eq!(parse_rss(status), None);
    }

    #[test]
    fn our_own_process_is_found_in_proc() {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux has /proc");
        assert!(comm_and_group(&stat).is_some(), "{stat}");
        let status = std::fs::read_to_string("/proc/self/status").expect("Linux has /proc");
        assert!(vm_rss_kib(&status).is_some_and(|kib| kib > 0));
        let own = rss(std::process::id()).expect("this process has a status");
        assert!(
            own.total > 0 && own.anon + own.file <= own.total + 4,
            "{own:?}"
        );
    }
}
