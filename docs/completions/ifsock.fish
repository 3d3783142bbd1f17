# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ifsock_global_optspecs
    string join \n n/netns= v/verbose wide h/help V/version
end

function __fish_ifsock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ifsock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ifsock_using_subcommand
    set -l cmd (__fish_ifsock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ifsock -n "__fish_ifsock_needs_command" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_needs_command" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_needs_command" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_needs_command" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_needs_command" -s V -l version -d 'Print version'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "sockets" -d 'List TCP/UDP sockets and the interface each is tied to (device, address, wildcard), with owners'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "watch" -d 'Stream interface changes (created, up/down, renamed, deleted, recreated, moved) with the sockets tied to the interface and the task that caused the change'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "hung" -d 'Tasks blocked receiving on a socket: for how long, on which socket and interface, even after the socket\'s fd was closed'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "teardown" -d 'Set an interface down, show for a grace period what each socket and task tied to it sees (send errors, woken or stranded receivers, closes), then delete it'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "tun" -d 'tun/tap devices: flags, attached fds, each queue\'s state and backlog, and queues that fill up with nobody reading them'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "abort" -d 'Destroy exactly the selected sockets (by inode, stranded, owner pid) so that threads stuck on them wake with ECONNABORTED; reports each socket and what each waiter saw'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "doctor" -d 'Check the kernel (BTF, lockdown, tracefs/bpffs) and which probes load, and why not'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "agent" -d 'Long-running recorder: follows every netns, journals changes and stranded sockets, and serves OpenMetrics at http://127.0.0.1:9469/metrics'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "journal" -d 'The history an agent journaled (`--netns NAME|INODE` filters instead of entering)'
complete -c ifsock -n "__fish_ifsock_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l iface -d 'Only sockets tied to this interface (exact name), and those still bound to any ifindex an interface of that name had before it was deleted (from the journal, see --journal)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l ifindex -d 'Only sockets tied to this ifindex. A deleted ifindex is accepted, with a note: the sockets still bound to it are listed' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l journal -d 'Journal of a recorder that was running before (`ifsock agent`): the names of deleted interfaces, for sockets still bound to them and for --iface. Default: the agent\'s directory, when it exists' -r -F
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l all-netns -d 'Every network namespace on the host (named ones and those of running processes)'
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l json -d 'One JSON object per line (fields documented in README.md)'
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l stranded -d 'Only stranded sockets (address gone, bound device down or deleted); none is not an error'
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand sockets" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l iface -d 'Only events of this interface (by current or previous name)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l rcvbuf -d 'Receive buffer of the rtnetlink subscription socket, bytes (1 to 1073741823; kernel default if unset). Above net.core.rmem_max it is set with SO_RCVBUFFORCE' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l reconcile-every -d 'Re-dump and diff this often to catch silently lost events (0 = off)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l count -d 'Stop after this many change events (for scripts and tests)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l probe-set -d 'Use this probe set for the device path (and the receive path, with `--record-receives`) instead of the best one allowed (fentry, kprobe, tracepoint); refused with the kernel\'s reason if it cannot load' -r -f -a "fentry\t'BTF trampolines (`fentry`/`fexit`) on kernel functions'
kprobe\t'`kprobe`/`kretprobe` on kernel functions'
tracepoint\t'Tracepoints only (`syscalls:*`, `sock:*`, `skb:*`) plus BPF iterators'"
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l stranded-after -d 'Raise `receiver_stranded` again when a receiver is still blocked this long after the down/delete that stranded it' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l sock-error-probe -d 'Observe kernel-reported socket errors with this program instead of the best one that loads (tp_btf, then tracepoint)' -r -f -a "tp_btf\t'`tp_btf/inet_sk_error_report`: reads the `struct sock *` (inode, netns, bound device)'
tracepoint\t'Classic tracepoint `sock:inet_sk_error_report`: format fields only; the socket is matched by family, local port and address in a snapshot'"
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l json -d 'One JSON object per line'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l no-sockets -d 'Do not attach socket snapshots to events (cheaper under bursts)'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l sockets-inline -d 'Put each change\'s sockets in the change record itself, read before it is printed (one filtered socket walk later: 4-5 ms at 10k UDP sockets). By default a change is printed as soon as it is parsed, with `sockets_follow: true` and no sockets, and its sockets follow in a `change_sockets` record (read once no further netlink input is queued)'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l sockets-after -d 'The default (each change first, its sockets in a `change_sockets` record); accepted so that scripts written when it was an option keep working'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l all-netns -d 'Follow every network namespace (named ones under /run/netns and those of running processes), including namespaces created and destroyed while running'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l record-receives -d 'Record receives: attach the receive-path probes for each blocked receiver\'s exact blocked-since time, at the cost of tracing every receive syscall of the host. Without it receivers come from the sockets\' wait queues and their blocked time is estimated from the scheduler (`blocked_since_source: scheduler`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l min-blocked -d 'Only receivers blocked at least this long (0 to 24h)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l pid -d 'Only this process (a pid that exists)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l interval -d 'Interval between snapshots with `--follow` (1ms to 24h; default 1s)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l probe-set -d 'Receive-path probe set instead of the best one allowed (fentry: `__skb_recv_udp`, `__skb_recv_datagram`, `__skb_wait_for_more_packets` trampolines; kprobe: the same with kprobes; tracepoint: the receive syscalls). Refused with the kernel\'s reason if unavailable. Only with `--follow`; implies `--record-receives`' -r -f -a "fentry\t'BTF trampolines (`fentry`/`fexit`) on kernel functions'
kprobe\t'`kprobe`/`kretprobe` on kernel functions'
tracepoint\t'Tracepoints only (`syscalls:*`, `sock:*`, `skb:*`) plus BPF iterators'"
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l journal -d 'Journal of a recorder that was running before (`ifsock agent`): interfaces it saw deleted name the interface a wildcard IP_PKTINFO receiver was stranded by. Default: the agent\'s directory, when it exists' -r -F
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l all-netns -d 'Every network namespace, with a NETNS column (JSON: `netns`). Without it, only receivers of the netns ifsock runs in (`--netns`): by their socket\'s netns, or by the thread\'s netns when the socket is unknown'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l json -d 'JSON: one object per receiver (one-shot), or one `snapshot` object per interval (`--follow`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l follow -d 'Keep running: follow interface deletions and print the list every `--interval` (receivers from the sockets\' wait queues, re-read at each interval)'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l record-receives -d 'With `--follow`: record receives, attaching the receive-path probes, for the exact blocked-since time of receives that start while ifsock runs, at the cost of tracing every receive syscall of the host. Without it receivers come from the sockets\' wait queues and blocked time is estimated from the scheduler (`blocked_since_source`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand hung" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l grace -d 'How long to observe between setting it down and deleting it (500ms, 2s, 1m)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l observe -d 'With --abort-stranded: how long to watch the waiters after the destroy' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l dry-run -d 'Only report what would be affected; change nothing'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -s y -l yes -d 'Do not ask for confirmation (required when stdin is not a terminal)'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l json -d 'One JSON object: the report (fields documented in README.md), also on error and interrupt'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l record-receives -d 'Record receives: attach the receive-path probes to time each receiver\'s wake-up during grace (`woke_ms`), at the cost of tracing every receive syscall of the host. Without it `woke_ms` is null; `blocked_at_down` and `blocked_at_end` still say who stayed blocked'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l abort-stranded -d 'After the delete, destroy the sockets it left stranded (bound to the interface or the veth peer by device or address), and those with receivers still blocked, as `ifsock abort` does; the report\'s `abort` field lists them (the dry run: what would be destroyed)'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand teardown" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -l interval -d 'Time between the two queue snapshots that show whether backlogs drain (0: one snapshot, no warnings; at most 24h)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -l json -d 'One JSON object per device (fields documented in README.md)'
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -l all-netns -d 'Every network namespace (named ones under /run/netns and those of running processes), not only the current one'
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand tun" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l inode -d 'Destroy the socket with this inode (`socket:[N]`); repeatable' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l iface -d 'With --stranded: only those tied to this interface, or still bound to any ifindex an interface of that name had before it was deleted (from the journal, see --journal)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l pid -d 'Only sockets owned by (or waited on by a thread of) this process' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l observe -d 'How long to watch the waiters after the destroy' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l via -d 'Destroy mechanism' -r -f -a "auto\t'bpf_sock_destroy() when it loads, else sock_diag'
bpf\t'Only bpf_sock_destroy() (fails when it does not load)'
sock-diag\t'Only SOCK_DESTROY over NETLINK_SOCK_DIAG'"
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l journal -d 'Journal of a recorder that was running before (`ifsock agent`): the names of deleted interfaces, for --iface and for sockets still bound to them. Default: the agent\'s directory, when it exists' -r -F
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l stranded -d 'Destroy stranded sockets: bound to a deleted or down device, or to an address no interface holds (the `stranded` of `sockets --json`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l all-netns -d 'Select among the sockets of every network namespace; each is destroyed inside its own. Without it (or --netns) other namespaces are never touched'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l dry-run -d 'List what would be destroyed and why; change nothing'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l yes -d 'Do not ask for confirmation (required when stdin is not a terminal)'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l json -d 'One JSON object'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand abort" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ifsock -n "__fish_ifsock_using_subcommand doctor" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand doctor" -l json -d 'One JSON object'
complete -c ifsock -n "__fish_ifsock_using_subcommand doctor" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand doctor" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l listen -d 'Serve /metrics and /healthz here (loopback by default; 0.0.0.0:9469 only if asked)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l journal -d 'Journal directory (JSON lines, rotated)' -r -F
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l journal-max-bytes -d 'Bound on the journal\'s total size, bytes (8 segments of a eighth each; at least 32768)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l reconcile-every -d 'Re-dump every netns\'s links and re-take its socket snapshot this often (0 = never)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l receivers -d 'Journal `receiver_stranded` records: after each down/delete, the receivers blocked on the sockets it strands (from the sockets\' wait queues; no receive tracing unless `--record-receives`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l causes -d 'Name the task behind each change (`cause`) on kernels that refuse fentry and kprobes, from the syscall tracepoints sys_enter_{sendmsg,sendto,ioctl}, which run on every such call of the host (measured: about 0.4 µs per call: +404 and +490 ns per sendto in two runs, 1.08-1.10x a loopback UDP round trip, on the 6.18 host; `ifsock-bench causes`). Where fentry or kprobes work, causes come from the rtnetlink and ioctl handlers at no idle cost, without this flag'
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l record-receives -d 'Record receives: attach the receive-path probes for each blocked receiver\'s exact blocked-since time, at the cost of tracing every receive syscall of the host. Without it receivers come from the sockets\' wait queues and their blocked time is estimated from the scheduler (`blocked_since_source: scheduler`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand agent" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -l since -d 'Only records since then: a duration back from now (`10m`, `2h`), a UTC time (`2026-12-01T19:00:00Z`), or `@UNIX_SECONDS`' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -l iface -d 'Only records about this interface: any record under this name, and every record of an interface that had it before or after a rename (same netns and ifindex)' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -l journal -d 'The journal directory an agent writes' -r -F
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -s n -l netns -d 'Run inside this network namespace: a name under /run/netns, `pid:PID`, or a path' -r
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -l json -d 'The records as stored, one JSON object per line'
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -s v -l verbose -d 'More logging (-v info, -vv debug); RUST_LOG overrides'
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -l wide -d 'Tables keep every column whole instead of fitting 120 columns (cut cells end in `…`)'
complete -c ifsock -n "__fish_ifsock_using_subcommand journal" -s h -l help -d 'Print help'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "sockets" -d 'List TCP/UDP sockets and the interface each is tied to (device, address, wildcard), with owners'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "watch" -d 'Stream interface changes (created, up/down, renamed, deleted, recreated, moved) with the sockets tied to the interface and the task that caused the change'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "hung" -d 'Tasks blocked receiving on a socket: for how long, on which socket and interface, even after the socket\'s fd was closed'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "teardown" -d 'Set an interface down, show for a grace period what each socket and task tied to it sees (send errors, woken or stranded receivers, closes), then delete it'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "tun" -d 'tun/tap devices: flags, attached fds, each queue\'s state and backlog, and queues that fill up with nobody reading them'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "abort" -d 'Destroy exactly the selected sockets (by inode, stranded, owner pid) so that threads stuck on them wake with ECONNABORTED; reports each socket and what each waiter saw'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "doctor" -d 'Check the kernel (BTF, lockdown, tracefs/bpffs) and which probes load, and why not'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "agent" -d 'Long-running recorder: follows every netns, journals changes and stranded sockets, and serves OpenMetrics at http://127.0.0.1:9469/metrics'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "journal" -d 'The history an agent journaled (`--netns NAME|INODE` filters instead of entering)'
complete -c ifsock -n "__fish_ifsock_using_subcommand help; and not __fish_seen_subcommand_from sockets watch hung teardown tun abort doctor agent journal help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
