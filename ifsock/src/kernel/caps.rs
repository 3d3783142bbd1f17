//! The capabilities ifsock uses, and which of them this process holds (`CapEff` of
//! `/proc/self/status`, the effective set as `capget(2)` returns it).
use serde::Serialize;

/// One capability ifsock uses: its bit (include/uapi/linux/capability.h), what it is used for,
/// and what is lost without it.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    /// `CAP_*` name.
    pub name: &'static str,
    /// Bit number in the capability sets.
    pub bit: u32,
    /// What ifsock does with it.
    pub used_for: &'static str,
    /// What is lost when the process lacks it.
    pub without: &'static str,
}

/// Every capability ifsock uses, in the order `doctor` lists them.
pub const USED: [Cap; 7] = [
    Cap {
        name: "CAP_BPF",
        bit: 39,
        used_for: "load the eBPF object, its maps, iterators and probes (bpf(2))",
        without: "nothing loads unless CAP_SYS_ADMIN stands in (bpf_capable())",
    },
    Cap {
        name: "CAP_PERFMON",
        bit: 38,
        used_for: "attach tracepoints and kprobes (perf_event_open(2)), read kernel memory from the probes",
        without: "no probe attaches unless CAP_SYS_ADMIN stands in (perfmon_capable())",
    },
    Cap {
        name: "CAP_SYS_ADMIN",
        bit: 21,
        used_for: "setns(2) into other network namespaces; mount tracefs and bpffs when missing",
        without: "only ifsock's own netns is seen (watch --all-netns, agent, --netns fail to enter the others); no mount of tracefs/bpffs",
    },
    Cap {
        name: "CAP_NET_ADMIN",
        bit: 12,
        used_for: "SO_RCVBUFFORCE for the rtnetlink subscription buffer; SOCK_DESTROY over sock_diag (abort)",
        without: "the subscription buffer stays at net.core.rmem_max (ENOBUFS and re-dumps under bursts); abort cannot destroy through sock_diag",
    },
    Cap {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        used_for: "open other users' /proc/PID/ns/net (namespaces not named in /run/netns) and read their /proc/PID/task/TID/syscall, fdinfo and poll/select sets (ptrace_may_access())",
        without: "a netns not named in /run/netns whose tasks are all other users' is not found; the /proc waiter fallback reports other users' waiters as unknown (EPERM), and the /proc receiver pass (hung without receive probes, the agent's blocked-receiver gauge where the wait queues cannot be walked) misses other users' blocked threads; the wait-queue waiter source does not need it",
    },
    Cap {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        used_for: "list other users' /proc/PID/fd (mode 0500, owner only)",
        without: "the /proc passes cannot map other users' fds to sockets",
    },
    Cap {
        name: "CAP_SYS_RESOURCE",
        bit: 24,
        used_for: "BPF maps beyond RLIMIT_MEMLOCK on kernels before 5.11",
        without: "nothing on >= 5.11 (BPF memory is charged to the memory cgroup); before, large maps fail unless RLIMIT_MEMLOCK is raised (LimitMEMLOCK=infinity)",
    },
];

/// One capability of [`USED`] and whether this process holds it.
#[derive(Clone, Debug, Serialize)]
pub struct CapStatus {
    /// `CAP_*` name.
    pub name: &'static str,
    /// In the effective set.
    pub held: bool,
    /// What ifsock does with it.
    pub used_for: &'static str,
    /// What is lost without it (`None` when held).
    pub without: Option<&'static str>,
}

/// The effective set from the text of `/proc/self/status` (`CapEff:\t000001ffffffffff`).
pub fn effective_of(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// [`USED`] against the effective set `eff`.
pub fn statuses(eff: u64) -> Vec<CapStatus> {
    USED.iter()
        .map(|c| {
            let held = eff & (1u64 << c.bit) != 0;
            CapStatus { name: c.name, held, used_for: c.used_for, without: (!held).then_some(c.without) }
        })
        .collect()
}

/// [`USED`] against this process's effective set; `None` when `/proc/self/status` has no
/// readable `CapEff`.
pub fn current() -> Option<Vec<CapStatus>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    effective_of(&status).map(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_from_capeff_and_each_missing_one_says_its_cost() {
        let status = "Name:\tifsock\nCapInh:\t0000000000000000\nCapEff:\t000001fffff7ffff\nCapBnd:\t000001ffffffffff\n";
        let eff = effective_of(status).unwrap();
        let s = statuses(eff);
        let ptrace = s.iter().find(|c| c.name == "CAP_SYS_PTRACE").unwrap();
        assert!(!ptrace.held && ptrace.without.unwrap().contains("wait-queue waiter source does not need it"));
        assert!(s.iter().filter(|c| c.name != "CAP_SYS_PTRACE").all(|c| c.held && c.without.is_none()), "{s:?}");
        assert_eq!(effective_of("Name:\tx\n"), None);
    }
}
