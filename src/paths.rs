//! Where rnet bind-mounts its network namespaces under the run directory. One small module
//! that the dataplane, the WireGuard tunnel and the daemon all read, so none of them has to
//! import another for a path.

use std::path::{Path, PathBuf};

use crate::model::NetworkId;

/// The directory holding rnet's namespace bind mounts.
pub fn netns_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("netns")
}

/// Where the tunnel namespace (WireGuard's) is bind-mounted.
pub fn tunnel_netns(run_dir: &Path) -> PathBuf {
    netns_dir(run_dir).join("wg")
}

/// The bind mount of a network's sandbox: `sb-<name>-<id>`, so a network re-created under
/// the same name never finds its predecessor's sandbox.
pub fn sandbox_path(run_dir: &Path, network: &str, id: &NetworkId) -> PathBuf {
    netns_dir(run_dir).join(format!("sb-{network}-{id}"))
}

/// The network name and id of a sandbox bind mount, if the file name is one of ours.
pub fn sandbox_network(file_name: &str) -> Option<(&str, NetworkId)> {
    let (name, id) = file_name.strip_prefix("sb-")?.rsplit_once('-')?;
    Some((name, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_and_the_sandboxes_share_one_directory() {
        let run = Path::new("/run/rnet");
        let id: NetworkId = "00000000000000aa".parse().unwrap();
        assert_eq!(tunnel_netns(run), PathBuf::from("/run/rnet/netns/wg"));
        assert_eq!(
            sandbox_path(run, "blue", &id),
            PathBuf::from("/run/rnet/netns/sb-blue-00000000000000aa")
        );
        assert_eq!(
            sandbox_path(run, "blue", &id).parent(),
            Some(netns_dir(run).as_path())
        );
        // The tunnel namespace's file name is never taken for a sandbox's.
        assert_eq!(sandbox_network("wg"), None);
    }
}
