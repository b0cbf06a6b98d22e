//! Packet captures for tests: tcpdump on a namespace's interface, written to a pcap file,
//! read back as IPv4 packets and classified (VXLAN with its VNI, WireGuard, other).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

pub const VXLAN_PORT: u16 = 4789;
pub const WIREGUARD_PORT: u16 = 51820;

/// A running tcpdump; stopped (and its file read) by `finish`, killed on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    netns: PathBuf,
    sentinel_to: SocketAddrV4,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Capture everything on `ifname` in the namespace at `netns`. `sentinel_to` is an
    /// address whose packets from that namespace cross `ifname`: `finish` sends one there and
    /// stops only once it is in the file, so nothing sent before it is missing.
    pub fn start(netns: &Path, ifname: &str, sentinel_to: SocketAddrV4) -> Capture {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("cap.pcap");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            // 400 bytes of each packet hold every header and the start of its payload;
            // a big buffer keeps the kernel from dropping packets while the disk catches up.
            .args([
                "--", "tcpdump", "-i", ifname, "-n", "-U", "-s", "400", "-B", "131072", "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        // tcpdump writes the file header once it listens.
        wait_until("tcpdump listens", Duration::from_secs(10), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() >= 24)
        });
        Capture {
            child: Some(child),
            file,
            netns: netns.to_path_buf(),
            sentinel_to,
            _dir: dir,
        }
    }

    /// Stop capturing; the frames seen and the raw file. Panics if tcpdump says the kernel
    /// dropped packets: a capture with holes proves nothing about what crossed.
    pub fn finish(mut self) -> Captured {
        let sentinel = format!("rnet-capture-sentinel-{}", std::process::id());
        let socket = super::udp_socket_in(&self.netns, "0.0.0.0:0");
        wait_until(
            "the capture holds everything sent so far",
            Duration::from_secs(10),
            || {
                let _ = socket.send_to(sentinel.as_bytes(), self.sentinel_to);
                std::fs::read(&self.file).is_ok_and(|raw| {
                    raw.windows(sentinel.len())
                        .any(|w| w == sentinel.as_bytes())
                })
            },
        );
        let child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = child.wait_with_output().expect("tcpdump exits");
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(
            report
                .lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "the capture is incomplete:\n{report}"
        );
        let raw = std::fs::read(&self.file).expect("read capture");
        Captured {
            frames: parse_pcap(&raw),
            raw,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a capture saw.
pub struct Captured {
    /// IPv4 packets, from their IP header.
    pub frames: Vec<Vec<u8>>,
    pub raw: Vec<u8>,
}

/// One IPv4 UDP datagram of a frame.
#[derive(Clone, Debug)]
pub struct Udp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

impl Captured {
    pub fn udp(&self) -> Vec<Udp> {
        self.frames.iter().filter_map(|f| udp_of(f)).collect()
    }

    /// VNIs of the VXLAN packets seen, one per packet.
    pub fn vxlan_vnis(&self) -> Vec<u32> {
        self.udp()
            .iter()
            .filter(|u| u.dport == VXLAN_PORT && u.payload.len() >= 8)
            .map(|u| u32::from_be_bytes([0, u.payload[4], u.payload[5], u.payload[6]]))
            .collect()
    }

    /// Payloads of the datagrams to or from WireGuard's port.
    pub fn wireguard(&self) -> Vec<Udp> {
        self.udp()
            .into_iter()
            .filter(|u| u.dport == WIREGUARD_PORT || u.sport == WIREGUARD_PORT)
            .collect()
    }

    /// Whether `needle` occurs anywhere in the captured bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.raw.windows(needle.len()).any(|w| w == needle)
    }
}

/// The IPv4 packets of a classic pcap file (either byte order; link types Ethernet, Linux
/// cooked v1 and v2, as `tcpdump -i any` writes), each as it starts at its IP header.
pub fn parse_pcap(raw: &[u8]) -> Vec<Vec<u8>> {
    if raw.len() < 24 {
        return Vec::new();
    }
    let magic = u32::from_le_bytes(raw[0..4].try_into().unwrap());
    let le = matches!(magic, 0xa1b2c3d4 | 0xa1b23c4d);
    let u32_at = |b: &[u8], i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    // (header length, offset of the EtherType) per link type.
    let (hdr, proto_at) = match u32_at(raw, 20) {
        1 => (14, 12),
        113 => (16, 14),
        276 => (20, 0),
        other => panic!("capture has link type {other}"),
    };
    let mut packets = Vec::new();
    let mut i = 24;
    while i + 16 <= raw.len() {
        let len = u32_at(raw, i + 8) as usize;
        let start = i + 16;
        if start + len > raw.len() {
            break;
        }
        let frame = &raw[start..start + len];
        if frame.len() > hdr && frame[proto_at..proto_at + 2] == [0x08, 0x00] {
            packets.push(frame[hdr..].to_vec());
        }
        i = start + len;
    }
    packets
}

fn udp_of(ip: &[u8]) -> Option<Udp> {
    if ip.len() < 20 + 8 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    // Only first fragments carry the UDP header.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let udp = &ip[ihl..];
    Some(Udp {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..].to_vec(),
    })
}
