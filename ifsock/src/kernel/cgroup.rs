//! Container attribution of a task: its cgroup v2 path (`/proc/PID/cgroup`), and the container
//! id and Kubernetes pod uid that path spells (docker, containerd, cri-o, podman, kubepods).
//!
//! The path is the one of the `0::` line (the unified hierarchy; cgroup v2 since 4.5). On a
//! hybrid host (v1 controllers plus cgroup2 mounted at `/sys/fs/cgroup/unified`) the same line
//! is there next to the v1 ones, so one parser serves both; on a pure v1 host there is no
//! `0::` line and the `name=systemd` hierarchy is the best stand-in.
use serde::Serialize;

/// Where a task sits in the cgroup tree and what it runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// cgroup v2 path relative to the cgroup2 mount (`/system.slice/docker-<id>.scope`).
    pub cgroup: Option<String>,
    /// Container id (64 hex digits for docker/containerd/cri-o/podman), when the path holds one.
    pub container_id: Option<String>,
    /// Kubernetes pod uid (`8-4-4-4-12` with dashes), when the path is under kubepods.
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup` and returns the task's attribution. A task that is gone (or a
/// kernel without cgroups) gives `None` for every field: attribution is best effort.
pub fn of_pid(pid: u32) -> Attribution {
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => attribution(&text),
        Err(_) => Attribution::default(),
    }
}

/// Attribution from the text of a `/proc/PID/cgroup` file.
pub fn attribution(proc_cgroup: &str) -> Attribution {
    let cgroup = unified_path(proc_cgroup);
    let container_id = cgroup.as_deref().and_then(container_id);
    let pod_uid = cgroup.as_deref().and_then(pod_uid);
    Attribution { cgroup, container_id, pod_uid }
}

/// The cgroup v2 path from the text of `/proc/PID/cgroup` (lines `ID:CONTROLLERS:PATH`): the
/// `0::PATH` line, else the v1 `name=systemd` hierarchy (pure v1 hosts), else `None`.
pub fn unified_path(proc_cgroup: &str) -> Option<String> {
    let mut systemd = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if id == "0" && controllers.is_empty() {
            return Some(path.to_string());
        }
        if controllers == "name=systemd" {
            systemd = Some(path.to_string());
        }
    }
    systemd
}

/// Whether `s` is a container id: 64 lowercase hex digits (docker, containerd, cri-o and
/// podman all use the sha256 of the container config).
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container id in a cgroup path. Patterns, last path component first:
/// - systemd driver: `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
///   `libpod-<id>.scope` (podman), also with `conmon` excluded (`crio-conmon-<id>` is the monitor);
/// - cgroupfs driver: `/docker/<id>`, `/kubepods/.../<id>`, `/libpod_parent/libpod-<id>`.
pub fn container_id(path: &str) -> Option<String> {
    for comp in path.rsplit('/') {
        let name = comp.strip_suffix(".scope").unwrap_or(comp);
        if name.contains("conmon") {
            continue;
        }
        let id = name.rsplit_once('-').map_or(name, |(_, id)| id);
        if is_container_id(id) {
            return Some(id.to_string());
        }
    }
    None
}

/// The Kubernetes pod uid in a cgroup path under `kubepods`: the `pod<uid>` component, from
/// the cgroupfs driver (`/kubepods/burstable/pod<uid>/…`, dashes) or the systemd driver
/// (`kubepods-burstable-pod<uid>.slice`, where systemd spells the uid's dashes as `_`).
pub fn pod_uid(path: &str) -> Option<String> {
    if !path.contains("kubepods") {
        return None;
    }
    for comp in path.split('/') {
        let name = comp.strip_suffix(".slice").unwrap_or(comp);
        let Some(pos) = name.rfind("pod") else { continue };
        let uid = name[pos + 3..].replace('_', "-");
        let groups: Vec<&str> = uid.split('-').collect();
        let shape = [8, 4, 4, 4, 12];
        if groups.len() == 5
            && groups.iter().zip(shape).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Some(uid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e0a0d9b6c3e2f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";

    #[test]
    fn hybrid_host_takes_the_unified_line() {
        let text = "9:name=systemd:/\n4:memory:/process_api/66\n1:cpu:/\n0::/ifsock-test-1\n";
        assert_eq!(unified_path(text).as_deref(), Some("/ifsock-test-1"));
    }

    #[test]
    fn pure_v2_and_pure_v1_hosts() {
        assert_eq!(unified_path("0::/user.slice/user-0.slice/session-1.scope\n").as_deref(), Some("/user.slice/user-0.slice/session-1.scope"));
        assert_eq!(unified_path("3:cpu:/x\n1:name=systemd:/system.slice/a.service\n").as_deref(), Some("/system.slice/a.service"));
        assert_eq!(unified_path("3:cpu:/x\n"), None);
        assert_eq!(unified_path(""), None);
    }

    #[test]
    fn container_ids_of_each_runtime() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(container_id(&format!("/machine.slice/crio-conmon-{ID}.scope")), None, "the monitor is not the container");
        assert_eq!(container_id("/system.slice/ssh.service"), None);
        assert_eq!(container_id("/docker/abc"), None);
    }

    #[test]
    fn pod_uids_with_both_cgroup_drivers() {
        let uid = "0b3c1a2e-5f6d-4e7a-8b9c-0d1e2f3a4b5c";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid(&systemd).as_deref(), Some(uid));
        let cgroupfs = format!("/kubepods/besteffort/pod{uid}/{ID}");
        assert_eq!(pod_uid(&cgroupfs).as_deref(), Some(uid));
        assert_eq!(pod_uid(&format!("/kubepods/pod{uid}")).as_deref(), Some(uid), "guaranteed class has no qos level");
        assert_eq!(pod_uid(&format!("/system.slice/pod{uid}.slice")), None, "not kubepods");
        assert_eq!(pod_uid("/kubepods/burstable/podxyz"), None);
    }

    #[test]
    fn attribution_joins_the_three() {
        let uid = "0b3c1a2e-5f6d-4e7a-8b9c-0d1e2f3a4b5c";
        let a = attribution(&format!("0::/kubepods/burstable/pod{uid}/{ID}\n"));
        assert_eq!(a.container_id.as_deref(), Some(ID));
        assert_eq!(a.pod_uid.as_deref(), Some(uid));
        assert!(a.cgroup.is_some());
    }
}
