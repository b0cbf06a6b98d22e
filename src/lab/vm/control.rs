//! Fault injection on a VM lab: cut or restore a guest's underlay link. QEMU's `set_link`
//! takes the carrier off the guest's virtio NIC, as pulling its cable would: the guest sees its
//! link go down and no frame passes either way.

use serde_json::json;

use super::{qmp, VmLabConfig};
use crate::lab::LabError;

/// Set guest `id`'s NIC link up or down.
pub fn set_link(cfg: &VmLabConfig, id: &str, up: bool) -> Result<(), LabError> {
    let h = cfg.host(id)?;
    qmp::command(&h.qmp, "set_link", json!({"name": "net0", "up": up}))?;
    let marker = h.dir.join("link-down");
    if up {
        let _ = std::fs::remove_file(&marker);
    } else {
        std::fs::write(&marker, b"").map_err(LabError::io("writing", &marker))?;
    }
    Ok(())
}

/// Whether guest `id`'s link was last set up (QEMU has no query for it, so `set_link` keeps a
/// marker file).
pub fn link_up(h: &super::VmHost) -> bool {
    !h.dir.join("link-down").exists()
}
