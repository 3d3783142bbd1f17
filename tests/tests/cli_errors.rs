//! Bad input: a clear one-line error and a non-zero exit, never a panic or partial output.
use ifsock_tests::*;

fn fails_with(args: &[&str], needle: &str) {
    let out = ifsock(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ifsock {args:?} succeeded");
    assert!(stderr.contains(needle), "ifsock {args:?}: stderr {stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "ifsock {args:?} panicked: {stderr}");
    assert!(out.stdout.is_empty(), "ifsock {args:?} printed partial output: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn unknown_interface_is_an_error() {
    require_root();
    fails_with(&["sockets", "--iface", "nosuchif0"], "unknown interface \"nosuchif0\"");
    fails_with(&["sockets", "--ifindex", "999999"], "unknown ifindex 999999");
}

#[test]
fn malformed_flags_are_errors() {
    fails_with(&["sockets", "--ifindex", "abc"], "invalid value 'abc'");
    fails_with(&["watch", "--reconcile-every", "5x"], "unknown unit");
    fails_with(&["sockets", "--iface", "a", "--ifindex", "1"], "cannot be used with");
    fails_with(&["frobnicate"], "unrecognized subcommand");
}

#[test]
fn unknown_netns_is_an_error() {
    require_root();
    fails_with(&["--netns", "ifsock-no-such-ns", "sockets"], "no network namespace named");
}

#[test]
fn netns_paths_that_are_not_network_namespaces_are_refused() {
    require_root();
    // Removed in Drop, also when an assertion fails.
    let temp = TempPath::new("notns", "file");
    let file = temp.path.clone();
    std::fs::write(&file, b"x").unwrap();
    let dir = std::env::temp_dir();
    let (file_s, dir_s) = (file.to_str().unwrap(), dir.to_str().unwrap());
    fails_with(&["--netns", "", "sockets"], "not a network namespace: \"\"");
    fails_with(&["--netns", file_s, "sockets"], &format!("not a network namespace: {file_s} (a regular file"));
    fails_with(&["--netns", dir_s, "sockets"], &format!("not a network namespace: {dir_s} (a directory"));
    fails_with(&["--netns", "/proc/self/ns/mnt", "sockets"], "not a network namespace: /proc/self/ns/mnt (a mnt namespace");
    for args in [["--netns", "", "sockets"], ["--netns", "/proc/self/ns/mnt", "sockets"]] {
        let out = ifsock(&args).unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains("EINVAL"), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A real one still works.
    let ns = Netns::new().unwrap();
    let out = ifsock(&["--netns", &format!("/run/netns/{}", ns.name), "sockets", "--json"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn durations_need_a_unit_and_the_error_names_the_fix() {
    fails_with(&["hung", "--min-blocked", "5"], "write 5s");
    fails_with(&["watch", "--reconcile-every", "30"], "no unit");
}

#[test]
fn netns_of_a_missing_pid_is_refused_in_words() {
    require_root();
    // pid_max is at most 2^22: this pid cannot exist.
    let out = ifsock(&["--netns", "pid:99999999", "sockets"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no process 99999999"), "{stderr}");
    assert!(!stderr.contains("os error"), "a raw errno is not an explanation: {stderr}");
}

#[test]
fn a_mistyped_interface_gets_the_closest_name_and_the_list() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("dy"), unique("dz"));
    ns.veth(&a, &b, None).unwrap();
    // Two neighbours swapped: one edit away.
    let mut typo: Vec<char> = a.chars().collect();
    typo.swap(0, 1);
    let typo: String = typo.into_iter().collect();
    fails_with(&["--netns", &ns.name, "sockets", "--iface", &typo], &format!("did you mean {a:?}?"));
    fails_with(&["--netns", &ns.name, "sockets", "--iface", &typo], "interfaces here: ");
    fails_with(&["--netns", &ns.name, "teardown", &typo, "--dry-run"], &format!("did you mean {a:?}?"));
}
