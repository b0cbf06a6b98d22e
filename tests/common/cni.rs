//! Driving a CNI plugin as a runtime does: `CNI_*` variables, the configuration on stdin,
//! the result or error on stdout. Used for rnet-cni and, in the benchmark, for the reference
//! `bridge` plugin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The rnet-cni binary cargo built for this test.
pub fn rnet_cni() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rnet-cni"))
}

/// Whether the ELF executable at `path` is linked statically: it names no interpreter (no
/// PT_INTERP program header, which every dynamically linked executable has).
pub fn is_static(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        &elf[..5],
        b"\x7fELF\x02",
        "{} is not a 64-bit ELF file",
        path.display()
    );
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(54), u16_at(56));
    !(0..count).any(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes")) == PT_INTERP
    })
}

/// One plugin execution's outcome.
#[derive(Debug)]
pub struct CniCall {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniCall {
    /// stdout parsed as JSON (panics, showing the call, if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns stdout as JSON (Null when empty).
    pub fn ok(&self) -> Value {
        assert_eq!(self.status, 0, "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with a CNI error object of `code`; returns its msg.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.status, 0, "plugin should have failed: {self:?}");
        let e = self.json();
        for key in ["cniVersion", "msg", "details"] {
            assert!(e[key].is_string(), "error lacks {key}: {e}");
        }
        assert_eq!(e["code"], code, "wrong code: {e}; stderr: {}", self.stderr);
        e["msg"].as_str().unwrap().to_string()
    }
}

/// A plugin binary plus the variables every call of a runtime carries.
#[derive(Clone, Debug)]
pub struct Plugin {
    pub path: PathBuf,
    /// CNI_PATH (where a plugin finds its delegates, e.g. bridge's host-local).
    pub cni_path: String,
    /// Extra variables for every call (e.g. RNET_SOCKET).
    pub env: Vec<(String, String)>,
}

impl Plugin {
    /// rnet-cni talking to the daemon at `socket` (through RNET_SOCKET, as a runtime's
    /// environment would carry it).
    pub fn rnet(socket: &Path) -> Plugin {
        Plugin {
            path: rnet_cni(),
            cni_path: "/usr/lib/cni".into(),
            env: vec![("RNET_SOCKET".into(), socket.display().to_string())],
        }
    }

    /// Runs the plugin with exactly these CNI variables (plus CNI_PATH and `self.env`).
    pub fn call(&self, vars: &[(&str, &str)], stdin: &str) -> CniCall {
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", &self.cni_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn CNI plugin");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write config");
        drop(input);
        let out = child.wait_with_output().expect("wait for CNI plugin");
        CniCall {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// ADD of (container id, ifname) in the namespace at `netns`; `args` is CNI_ARGS.
    pub fn add(&self, conf: &Value, cid: &str, netns: &Path, ifname: &str, args: &str) -> CniCall {
        let ns = netns.display().to_string();
        self.call(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
            ],
            &conf.to_string(),
        )
    }

    /// DEL; `netns` may be None (the runtime lost it).
    pub fn del(&self, conf: &Value, cid: &str, netns: Option<&Path>, ifname: &str) -> CniCall {
        let ns = netns.map(|p| p.display().to_string()).unwrap_or_default();
        let mut vars = vec![
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", cid),
            ("CNI_IFNAME", ifname),
        ];
        if netns.is_some() {
            vars.push(("CNI_NETNS", &ns));
        }
        self.call(&vars, &conf.to_string())
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(
        &self,
        conf: &Value,
        prev: &Value,
        cid: &str,
        netns: &Path,
        ifname: &str,
    ) -> CniCall {
        let mut conf = conf.clone();
        conf["prevResult"] = prev.clone();
        let ns = netns.display().to_string();
        self.call(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", ifname),
            ],
            &conf.to_string(),
        )
    }
}
