#!/usr/bin/env python3
"""CPU-µs per packet of rnet's encrypted path, split by category, from scripts/perf-wireguard.sh.

Usage: perf-wireguard-split.py LABEL=DIR[,DIR...] [LABEL=DIR[,DIR...] ...]
       (e.g. before=/tmp/a1,/tmp/a2 after=/tmp/b1,/tmp/b2: several runs of a build are averaged)

For each DIR (one run of perf-wireguard.sh) and each side (sender = h2's rnetd, receiver =
h1's): the CPU time /proc gave over the window divided by the data packets the sender's TUN
device handed rnetd in that window (one per TCP segment of the flow, however many a read
carried), then split by the share
of perf's cpu-clock samples (weighted by their period) in each category. A sample's category
comes from its kernel stack (which system call it is under: kernel stacks are complete) or,
in userspace, from its leaf symbol (the release build has no frame pointers, so user stacks
are not). Prints markdown tables: categories side by side, per-thread CPU, top symbols.
"""

import bisect
import re
import subprocess
import sys
from collections import defaultdict

# Rows of the main table, in order. Sub-rows start with "  ".
ROWS = [
    "encryption/decryption (boringtun, ChaCha20-Poly1305)",
    "TUN read (syscall + kernel tun code + copy out)",
    "TUN write (syscall + kernel tun code + copy in)",
    "  kernel stack fed by the TUN write, run inline (IP, VXLAN decap, bridge, veth, TCP)",
    "UDP send (GSO sendmsg, kernel UDP/IP, veth, quinn-udp)",
    "  underlay delivery run inline in the send (switch bridge, peer host's IP/UDP/GRO receive)",
    "UDP receive (recvmmsg with GRO, kernel UDP, quinn-udp)",
    "copies in userspace (memcpy/memmove/memset)",
    "locks, maps, allocation (userspace)",
    "rnet's own datapath code (loops, TUN batching, checksums)",
    "tokio / other userspace",
    "other kernel (poll/futex waits and wakeups, scheduler, interrupts, timers)",
]

# Bytes of headers in front of each TUN packet's TCP payload, and the TCP payload of a
# full-sized segment: see `analyse`.
HEADERS = 50 + 20 + 32
MSS = 1338

KERNEL_DSO = re.compile(r"^\[(kernel\.kallsyms|[a-z0-9_]+)\]$")
CRYPTO = re.compile(r"chacha|poly1305|aead|boringtun|ring_core|blake2|x25519|curve25519|aes_|Cipher",
                    re.I)
COPY = re.compile(r"^(__)?(memcpy|memmove|memset|mempcpy)|^__mem(cpy|move|set)_")
LOCKS_ALLOC = re.compile(
    r"malloc|^free$|^cfree|_int_free|_int_malloc|_int_realloc|realloc|__rust_(alloc|dealloc|realloc)"
    r"|alloc::alloc|RawVec|parking_lot|lock_api|pthread_mutex|pthread_rwlock|pthread_cond|futex"
    r"|RwLock|Mutex|hashbrown|HashMap|BTreeMap|Arc<|drop_in_place|clone|sync::rwlock|sync::mutex"
    r"|tcache|arena_", re.I)
UDP_USER = re.compile(r"quinn_udp|sendmsg|recvmmsg|recvmsg|sendmmsg")
RNET = re.compile(r"^rnet::|^<rnet::")
TOKIO = re.compile(r"tokio|mio::")

# Kernel stack markers (any frame of the stack).
TUN_READ = {"tun_chr_read_iter", "tun_do_read", "tun_put_user"}
TUN_WRITE = {"tun_chr_write_iter", "tun_get_user"}
INLINE_RX = {"__netif_receive_skb", "__netif_receive_skb_core", "netif_receive_skb",
             "process_backlog", "net_rx_action", "__do_softirq", "handle_softirqs",
             "netif_receive_skb_list_internal", "ip_rcv", "napi_gro_receive", "do_softirq",
             "__napi_poll", "ip_list_rcv", "__netif_receive_skb_list_core"}
UDP_SEND = {"__sys_sendmsg", "__sys_sendmmsg", "udp_sendmsg", "__x64_sys_sendmsg",
            "__x64_sys_sendmmsg", "__x64_sys_sendto", "__sys_sendto", "___sys_sendmsg"}
UDP_RECV = {"__sys_recvmmsg", "do_recvmmsg", "udp_recvmsg", "__x64_sys_recvmmsg",
            "__x64_sys_recvmsg", "___sys_recvmsg", "__sys_recvmsg", "__x64_sys_recvfrom"}


# The libc system call wrapper a kernel stack came from (its first user frame), in the
# datapath threads: the TUN is read with readv/read and written with writev/write there.
WRAP_TUN_READ = re.compile(r"readv|^(__GI___libc_|__libc_)?read$")
WRAP_TUN_WRITE = re.compile(r"writev|^(__GI___libc_|__libc_)?write$")
WRAP_SEND = re.compile(r"sendmsg|sendmmsg|sendto")
WRAP_RECV = re.compile(r"recvmmsg|recvmsg|recvfrom")


def syscall_row(comm, names, wrapper):
    """The syscall row of a kernel stack (names leaf first), or None."""
    nameset = set(names)
    datapath = comm.startswith("wg-")
    if nameset & TUN_READ or (datapath and WRAP_TUN_READ.search(wrapper)):
        return ROWS[1]
    if nameset & TUN_WRITE or (datapath and WRAP_TUN_WRITE.search(wrapper)):
        return ROWS[2]
    if nameset & UDP_SEND or WRAP_SEND.search(wrapper):
        return ROWS[4]
    if nameset & UDP_RECV or WRAP_RECV.search(wrapper):
        return ROWS[6]
    return None


def classify(comm, frames):
    """frames: [(sym, dso)] leaf first. Returns a row of ROWS."""
    sym, dso = frames[0]
    if KERNEL_DSO.match(dso):
        names = [f[0] for f in frames if KERNEL_DSO.match(f[1])]
        wrapper = next((f[0] for f in frames if not KERNEL_DSO.match(f[1])), "")
        row = syscall_row(comm, names, wrapper)
        # Receive processing (softirq, netif_receive_skb) above the system call: for a TUN
        # write or a UDP send it is the stack the call fed, run inline; otherwise an interrupt.
        inline = any(n in INLINE_RX for n in names)
        if row == ROWS[2] and inline:
            return ROWS[3]
        if row == ROWS[4] and inline:
            return ROWS[5]
        if row in (ROWS[1], ROWS[6]) and inline:
            return ROWS[11]
        return row or ROWS[11]
    if CRYPTO.search(sym):
        return ROWS[0]
    if COPY.search(sym):
        return ROWS[7]
    if dso.endswith("libc.so.6") and comm.startswith("wg-"):
        row = syscall_row(comm, [], sym)
        if row:
            return row
    if UDP_USER.search(sym):
        return ROWS[4] if "send" in sym else ROWS[6]
    if RNET.search(sym):
        return ROWS[9]
    if LOCKS_ALLOC.search(sym):
        return ROWS[8]
    return ROWS[10]


# The parts of two rows, by the sample's leaf (TUN read) or by the first layer on its stack
# (the stack behind a TUN write).
KERNEL_COPY = {"_copy_to_iter", "_copy_from_iter", "__check_object_size", "copy_user_generic",
               "rep_movs_alternative", "__pi_memcpy", "check_heap_object", "__virt_addr_valid",
               "simple_copy_to_iter", "skb_copy_datagram_iter", "__skb_datagram_iter"}
SYSCALL_PATH = re.compile(r"syscall|entry_|fdget|do_readv|vfs_readv|readv|import_iovec|rw_verify"
                          r"|fsnotify|security_|iov_iter|do_iter")
SKB_FREE = re.compile(r"kmem_cache|slab|kfree|skb_release|consume_skb|__alloc_skb|kmalloc")
GSO_SPLIT = {"skb_segment", "__udp_gso_segment", "udp_rcv_segment", "__skb_gso_segment",
             "skb_udp_tunnel_segment"}


def tun_read_part(frames):
    leaf = frames[0][0]
    if leaf in KERNEL_COPY:
        return "copy out"
    if SKB_FREE.search(leaf):
        return "skb free"
    if SYSCALL_PATH.search(leaf):
        return "system call entry/exit and readv plumbing"
    return "tun code and the rest"


def inline_layer(frames):
    if frames[0][0] in KERNEL_COPY:
        return "copies"
    for name, _ in frames:
        if name.startswith("tcp_") or name.startswith("tcp4"):
            return "TCP"
        if name in GSO_SPLIT:
            return "splitting the GSO write into datagrams"
        if name.startswith("vxlan"):
            return "VXLAN"
        if name.startswith("br_"):
            return "bridge"
        if name.startswith("veth"):
            return "veth"
        if "gro" in name:
            return "GRO (merging again)"
        if name.startswith("ip_") or name.startswith("udp"):
            return "IP/UDP"
    return "other"


DETAIL = {ROWS[1]: tun_read_part, ROWS[3]: inline_layer}


class Symbols:
    """File offset -> function of an ELF file, from its program headers and nm (perf 6.1 here
    fails to read rnetd's symbols and prints [unknown] with the offset in the file)."""

    def __init__(self):
        self.tables = {}

    def lookup(self, path, offset):
        if path not in self.tables:
            loads = []
            try:
                hdrs = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True,
                                      check=True).stdout
            except (OSError, subprocess.CalledProcessError):
                hdrs = ""
            for line in hdrs.splitlines():
                f = line.split()
                if f and f[0] == "LOAD":
                    loads.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))  # off, vaddr, filesz
            rows = []
            try:
                out = subprocess.run(["nm", "-C", "--defined-only", path], capture_output=True,
                                     text=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError):
                out = ""
            for line in out.splitlines():
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[1] in "tTwW":
                    rows.append((int(parts[0], 16), parts[2]))
            rows.sort()
            self.tables[path] = (loads, [a for a, _ in rows], [n for _, n in rows])
        loads, addrs, names = self.tables[path]
        addr = next((offset - off + vaddr for off, vaddr, size in loads
                     if off <= offset < off + size), offset)
        i = bisect.bisect_right(addrs, addr) - 1
        return names[i] if i >= 0 else "[unknown]"


SYMBOLS = Symbols()


def samples(data):
    """Yields (comm, period, frames) for each sample of a perf.data file."""
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "comm,tid,period,ip,sym,dso", "--no-inline"],
        capture_output=True, text=True, check=True).stdout
    comm, period, frames = None, 0, []
    line_re = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)$")
    for line in out.splitlines() + [""]:
        if not line.strip():
            if comm is not None and frames:
                yield comm, period, frames
            comm, period, frames = None, 0, []
        elif not line[0].isspace():
            # "comm tid period": comm may hold spaces; the last two fields are numbers.
            parts = line.split()
            comm, period = " ".join(parts[:-2]), int(parts[-1])
        else:
            m = line_re.match(line)
            if m:
                sym, dso = re.sub(r"\+0x[0-9a-f]+$", "", m.group(2)), m.group(3)
                if sym == "[unknown]" and dso.startswith("/"):
                    sym = SYMBOLS.lookup(dso, int(m.group(1), 16))
                frames.append((sym, dso))


def read_snapshot(path):
    snap = {"task": defaultdict(dict)}
    for line in open(path):
        f = line.split()
        if f[0] in ("time", "hz"):
            snap[f[0]] = float(f[1])
        elif f[0] == "loadavg":
            snap["loadavg"] = " ".join(f[1:4])
        elif f[0] == "machine":
            v = [int(x) for x in f[2:]]
            snap["machine"] = (sum(v), v[3] + v[4])  # total, idle + iowait
        elif f[1] == "proc":
            snap[f[0] + ".cpu"] = int(f[2]) + int(f[3])
        elif f[1] == "task":
            snap["task"][f[0]][f[2]] = (f[3], int(f[4]) + int(f[5]))
        elif f[1] == "tun":
            # rx bytes, rx packets (written by rnetd), tx bytes, tx packets (read by rnetd)
            snap[f[0] + ".tun"] = [int(x) for x in f[2:6]]
        elif f[1] == "udp":
            snap[f[0] + ".udp"] = [int(x) for x in f[2:5]]  # InDatagrams, OutDatagrams, RcvbufErrors
    return snap


def thread_group(comm):
    if comm.startswith("wg-"):
        return comm
    if comm.startswith("tokio"):
        return "tokio workers"
    return "other threads"


def analyse(d):
    a, b = read_snapshot(f"{d}/before.txt"), read_snapshot(f"{d}/after.txt")
    hz, secs = a["hz"], b["time"] - a["time"]
    tun = {h: [y - x for x, y in zip(a[h + ".tun"], b[h + ".tun"])] for h in ("h1", "h2")}
    udp = {h: [y - x for x, y in zip(a[h + ".udp"], b[h + ".udp"])] for h in ("h1", "h2")}
    # Data packets: the TCP segments the sender's TUN handed its rnetd. With TSO on the TUN
    # (rnetd --wireguard-tun-offload) one read carries up to ~48 of them, so they are counted
    # from the bytes: each read has one set of headers (VXLAN 50, IPv4 20, TCP with
    # timestamps 32) and the segments' payloads (MSS 1338 at the workload MTU of 1390).
    reads = tun["h2"][3]
    packets = max(round((tun["h2"][2] - HEADERS * reads) / MSS), 1)
    mt, mi = b["machine"][0] - a["machine"][0], b["machine"][1] - a["machine"][1]
    res = {
        "secs": secs, "packets": packets, "pps": packets / secs,
        "gbps_tun": packets * (HEADERS + MSS) * 8 / secs / 1e9,
        "acks": tun["h1"][3], "rx_writes": tun["h1"][1], "tun": tun, "udp": udp, "reads": reads,
        "load": a["loadavg"], "machine_busy": 1 - mi / mt if mt else 0, "sides": {},
    }
    for side, h in (("sender", "h2"), ("receiver", "h1")):
        cpu_s = (b[h + ".cpu"] - a[h + ".cpu"]) / hz
        us_per_packet = cpu_s * 1e6 / packets
        by_row, by_sym, total = defaultdict(int), defaultdict(int), 0
        by_thread_samples = defaultdict(int)
        by_detail = defaultdict(int)
        for comm, period, frames in samples(f"{d}/{side}.data"):
            row = classify(comm, frames)
            by_row[row] += period
            by_sym[(frames[0][0], frames[0][1], row)] += period
            by_thread_samples[thread_group(comm)] += period
            if row in DETAIL:
                by_detail[(row, DETAIL[row](frames))] += period
            total += period
        threads = defaultdict(float)
        for tid, (comm, ticks) in b["task"][h].items():
            before = a["task"][h].get(tid, (comm, 0))[1]
            threads[thread_group(comm)] += (ticks - before) / hz
        res["sides"][side] = {
            "cpu_s": cpu_s, "us": us_per_packet, "rows": by_row, "total": total,
            "syms": by_sym, "threads": threads, "sampled_s": total / 1e9,
            "thread_samples": by_thread_samples, "detail": by_detail,
        }
    return res


def mean(xs):
    return sum(xs) / len(xs)


def combine(runs):
    """Several runs of one build: per-row µs averaged over the runs, the facts of each run."""
    c = {"runs": runs, "sides": {}}
    for side in ("sender", "receiver"):
        rows = {}
        for row in ROWS:
            rows[row] = mean([r["sides"][side]["rows"][row] / r["sides"][side]["total"]
                              * r["sides"][side]["us"] for r in runs])
        us = [r["sides"][side]["us"] for r in runs]
        threads = {}
        for r in runs:
            for g, secs in r["sides"][side]["threads"].items():
                threads[g] = threads.get(g, 0) + secs * 1e6 / r["packets"] / len(runs)
        c["sides"][side] = {"rows": rows, "us": mean(us), "us_min": min(us), "us_max": max(us),
                            "threads": threads}
    return c


def main():
    builds = []
    for arg in sys.argv[1:]:
        label, _, dirs = arg.partition("=")
        builds.append((label, combine([analyse(d) for d in dirs.split(",")])))
    labels = [l for l, _ in builds]
    n = {l: len(b["runs"]) for l, b in builds}
    print("| CPU µs per data packet (mean of the runs) | " + " | ".join(
        f"{l} sender | {l} receiver" for l in labels) + " |")
    print("|---|" + "---|" * (2 * len(builds)))
    for row in ROWS:
        cells = []
        for _, b in builds:
            for side in ("sender", "receiver"):
                s = b["sides"][side]
                cells.append(f"{s['rows'][row]:.2f} ({s['rows'][row] / s['us'] * 100:.0f}%)")
        name = ("&nbsp;&nbsp;↳ " + row.strip()) if row.startswith("  ") else row
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for _, b in builds:
        for side in ("sender", "receiver"):
            s = b["sides"][side]
            cells.append(f"**{s['us']:.2f}** ({s['us_min']:.2f}–{s['us_max']:.2f})")
    print("| **total (/proc utime+stime; range over the runs)** | " + " | ".join(cells) + " |")
    print()
    print("Sub-rows (↳) are part of the row above them. Runs: " +
          ", ".join(f"{l} {n[l]}" for l in labels) + ".")
    print()
    print("| over the runs: median (min–max) | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(builds))
    facts = [
        ("window (s)", "{:.1f}", lambda r: r["secs"]),
        ("data packets per second (sender TUN reads), thousands", "{:.0f}", lambda r: r["pps"] / 1000),
        ("Gbit/s of tunnel packets (1440 bytes each)", "{:.2f}", lambda r: r["gbps_tun"]),
        ("ACKs (packets the receiver's TUN handed its rnetd) per 100 data packets", "{:.2f}",
         lambda r: r["acks"] * 100 / r["packets"]),
        ("data packets per TUN read on the sender (TSO)", "{:.1f}",
         lambda r: r["packets"] / max(r["reads"], 1)),
        ("data packets per TUN write on the receiver (GSO)", "{:.1f}",
         lambda r: r["packets"] / max(r["rx_writes"], 1)),
        ("UDP receive-buffer drops (both hosts)", "{:.0f}", lambda r: r["udp"]["h1"][2] + r["udp"]["h2"][2]),
        ("sender rnetd CPU (cores)", "{:.2f}", lambda r: r["sides"]["sender"]["cpu_s"] / r["secs"]),
        ("receiver rnetd CPU (cores)", "{:.2f}", lambda r: r["sides"]["receiver"]["cpu_s"] / r["secs"]),
        ("machine busy over the window (% of 2 cores)", "{:.0f}", lambda r: r["machine_busy"] * 100),
        ("load average (1 min) at the window's start", "{:.2f}", lambda r: float(r["load"].split()[0])),
    ]
    for name, fmt, f in facts:
        cells = []
        for _, b in builds:
            v = sorted(f(r) for r in b["runs"])
            med = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
            cells.append(f"{fmt.format(med)} ({fmt.format(v[0])}–{fmt.format(v[-1])})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    groups = ["wg-tx", "wg-rx", "wg-timers", "tokio workers", "other threads"]
    print("| CPU µs per data packet by thread (/proc, mean) | " + " | ".join(
        f"{l} sender | {l} receiver" for l in labels) + " |")
    print("|---|" + "---|" * (2 * len(builds)))
    for g in groups:
        cells = [f"{b['sides'][side]['threads'].get(g, 0):.2f}"
                 for _, b in builds for side in ("sender", "receiver")]
        print(f"| {g} | " + " | ".join(cells) + " |")
    print()
    for row, side in ((ROWS[1], "sender"), (ROWS[3], "receiver")):
        print(f"Parts of \"{row.strip()}\", {side} (% of that row's samples, all runs):")
        print()
        for label, b in builds:
            parts = defaultdict(int)
            for r in b["runs"]:
                for (rw, part), p in r["sides"][side]["detail"].items():
                    if rw == row:
                        parts[part] += p
            total = sum(parts.values()) or 1
            print(f"- {label}: " + ", ".join(f"{part} {p / total * 100:.0f}%" for part, p in
                                            sorted(parts.items(), key=lambda kv: -kv[1])))
        print()
    for label, b in builds:
        for side in ("sender", "receiver"):
            syms, total = defaultdict(int), 0
            for r in b["runs"]:
                for k, p in r["sides"][side]["syms"].items():
                    syms[k] += p
                total += r["sides"][side]["total"]
            print(f"Top symbols, {label}, {side} (self time, % of all samples of the runs):")
            print()
            for (sym, dso, row), p in sorted(syms.items(), key=lambda kv: -kv[1])[:15]:
                print(f"- {p / total * 100:5.1f}% `{sym[:90]}` [{dso.split('/')[-1]}] — {row.strip()}")
            print()


if __name__ == "__main__":
    main()
