//! The datapath threads of the userspace tunnel: tx (device → encrypt → UDP GSO sends), rx
//! (`recvmmsg` with UDP GRO → decrypt → merged by `gather` → device, with handshakes routed
//! to their peer's link) and timers. The socket I/O is `batch`'s, on quinn-udp.

use super::*;

impl Inner {
    fn set_up(&self, peer: &Peer, up: bool) {
        if peer.state.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        if up {
            *peer.state.problem.lock() = None;
            tracing::info!(peer = %peer.spec.host, "WireGuard tunnel up");
        } else {
            tracing::warn!(peer = %peer.spec.host, "WireGuard tunnel down");
        }
        (self.on_change)();
    }

    fn note_problem(&self, map: &PeerMap, from: Ipv4Addr, problem: String) {
        let slot = match map.by_ip.get(&from) {
            Some(p) => {
                let mut cur = p.state.problem.lock();
                if cur.as_deref() == Some(problem.as_str()) {
                    return;
                }
                *cur = Some(problem.clone());
                p.spec.host.clone()
            }
            None => {
                // Sources are unauthenticated here: keep a bounded record, and log only news.
                let mut s = self.strangers.lock();
                if s.get(&from) == Some(&problem)
                    || (s.len() >= MAX_STRANGERS && !s.contains_key(&from))
                {
                    return;
                }
                s.insert(from, problem.clone());
                from.to_string()
            }
        };
        tracing::warn!(peer = %slot, "WireGuard handshake refused: {problem}");
    }

    // ----- outbound: device → peers -----

    pub(super) fn tx_loop(&self) {
        let mut packet = vec![0u8; MAX_PACKET + 1];
        let mut segment = vec![0u8; BUF - 64];
        let mut out = SendBatch::default();
        loop {
            let map = self.peers.read().clone();
            while !out.is_full() {
                let (n, gso) = match self.tun.read(&mut packet) {
                    Ok(Some(TunRead::Packet(n))) => (n, None),
                    Ok(Some(TunRead::Segments(n, gso))) => (n, Some(gso)),
                    Ok(Some(TunRead::Refused)) => {
                        self.counters.bad_offload.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(Some(TunRead::NotIpv4)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "reading {TUN_NAME} failed");
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                };
                let packet = &packet[..n];
                // Only IPv4 leaves through the tunnel: the VXLAN sockets of encrypted networks.
                if n < 20 || packet[0] >> 4 != 4 {
                    continue;
                }
                let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                let Some(peer) = map.by_ip.get(&dst) else {
                    self.counters.no_peer.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let Some(gso) = gso else {
                    self.seal(peer, packet, &mut out);
                    continue;
                };
                // Every segment goes to the same peer; a full batch is sent on the way.
                let cut = offload::split(packet, &gso, &mut segment, |s| {
                    self.seal(peer, s, &mut out);
                    if out.is_full() {
                        out.flush(&self.udp);
                    }
                });
                match cut {
                    Ok(_) => self.counters.super_packets.fetch_add(1, Ordering::Relaxed),
                    Err(_) => self.counters.bad_offload.fetch_add(1, Ordering::Relaxed),
                };
            }
            if out.len > 0 {
                out.flush(&self.udp);
            } else {
                self.tun.wait_readable(1000);
            }
        }
    }

    /// Encrypt one packet for `peer` into the batch (or, without a session, leave it to
    /// boringtun, which keeps it for after the handshake).
    fn seal(&self, peer: &Peer, packet: &[u8], out: &mut SendBatch) {
        let sealed = peer
            .state
            .link
            .lock()
            .sender()
            .encapsulate(packet, out.slot());
        if let TunnResult::WriteToNetwork(d) = sealed {
            let len = d.len();
            out.commit(len, peer.spec.endpoint);
        }
    }

    // ----- inbound: peers → device -----

    pub(super) fn rx_loop(&self) {
        let mut batch = RecvBatch::default();
        let mut plain = vec![0u8; BUF];
        let mut out = TunWriter::default();
        loop {
            if let Err(e) = batch.recv(&self.udp) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(error = %e, "receiving on the WireGuard socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let map = self.peers.read().clone();
            for i in 0..batch.len {
                let Some((datagrams, from)) = batch.get(i) else {
                    continue;
                };
                for datagram in datagrams {
                    self.receive(&map, datagram, from, &mut plain, &mut out);
                }
            }
            let _ = out.flush(&self.tun);
            let merged = std::mem::take(&mut out.merged);
            if merged > 0 {
                self.counters.merged.fetch_add(merged, Ordering::Relaxed);
            }
        }
    }

    fn receive(
        &self,
        map: &PeerMap,
        datagram: &[u8],
        from: SocketAddrV4,
        plain: &mut [u8],
        out: &mut TunWriter,
    ) {
        // boringtun panics when a data message does not fit the output buffer: anything
        // longer than the largest datagram a peer can send is garbage anyway.
        if datagram.len() > plain.len() {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Which peer: by the static key inside a handshake initiation, by our index otherwise.
        let by_index = |idx: u32| map.by_index.get(&link::peer_index(idx)).cloned();
        let (peer, to, handshake) = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Packet::HandshakeInit(init)) => (
                self.initiator(map, &init, datagram, from),
                To::Initiation,
                true,
            ),
            Ok(Packet::HandshakeResponse(r)) => {
                (by_index(r.receiver_idx), To::Index(r.receiver_idx), true)
            }
            Ok(Packet::PacketCookieReply(c)) => {
                (by_index(c.receiver_idx), To::Index(c.receiver_idx), true)
            }
            Ok(Packet::PacketData(d)) => {
                (by_index(d.receiver_idx), To::Index(d.receiver_idx), false)
            }
        };
        let Some(peer) = peer else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut link = peer.state.link.lock();
        let Some(tunn) = link.receiver(to) else {
            // A session the link no longer has (replaced by a key change).
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tunn.decapsulate(Some(IpAddr::V4(*from.ip())), datagram, plain) {
            TunnResult::WriteToTunnelV4(packet, src) => {
                // Cryptokey routing: a peer may only speak for its own tunnel address.
                if src == peer.spec.tunnel_ip {
                    let _ = out.push(&self.tun, packet);
                } else {
                    self.counters.spoofed.fetch_add(1, Ordering::Relaxed);
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                self.counters.spoofed.fetch_add(1, Ordering::Relaxed);
            }
            TunnResult::WriteToNetwork(reply) => {
                self.udp.send_one(reply, peer.spec.endpoint);
                // A finished handshake releases the packets boringtun queued meanwhile.
                while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], plain) {
                    self.udp.send_one(queued, peer.spec.endpoint);
                }
            }
            TunnResult::Err(e) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                if handshake {
                    tracing::debug!(peer = %peer.spec.host, error = ?e, "handshake message refused");
                }
            }
            TunnResult::Done => {}
        }
        if link.renewing() && link.settle() {
            tracing::info!(peer = %peer.spec.host, "WireGuard session under the new key took over");
        }
        if !peer.state.up.load(Ordering::Relaxed) || handshake {
            let up = link.has_session();
            drop(link);
            self.set_up(&peer, up);
        }
    }

    /// The peer a handshake initiation comes from: its MACs must check out against this
    /// host's key (rate-limited, cookies under load), and the static key inside must be a
    /// peer's. Refusals are remembered with their reason for `rnet peers`.
    fn initiator(
        &self,
        map: &PeerMap,
        init: &boringtun::noise::HandshakeInit,
        datagram: &[u8],
        from: SocketAddrV4,
    ) -> Option<Arc<Peer>> {
        let keys = self.keys.read();
        let mut cookie = [0u8; 64];
        match keys.admit(from, datagram, &mut cookie) {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(reply)) => {
                self.udp.send_one(reply, from);
                return None;
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                self.note_problem(
                    map,
                    *from.ip(),
                    "its handshakes are made for another public key than this host's: the store it reads holds a wrong key for this host".into(),
                );
                return None;
            }
            Err(_) => return None,
        }
        let half = match parse_handshake_anon(&keys.key.secret, &keys.key.public, init) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(from = %from, error = ?e, "handshake initiation does not open");
                return None;
            }
        };
        drop(keys);
        match map.by_key.get(&half.peer_static_public) {
            Some(p) if p.spec.tunnel_ip == *from.ip() => Some(p.clone()),
            Some(p) => {
                self.note_problem(
                    map,
                    *from.ip(),
                    format!(
                        "it presents host {}'s public key from {} instead of {}",
                        p.spec.host,
                        from.ip(),
                        p.spec.tunnel_ip
                    ),
                );
                None
            }
            None => {
                let presented = base64_of(&half.peer_static_public);
                let expected = map
                    .by_ip
                    .get(from.ip())
                    .map(|p| {
                        format!(
                            ", but the store says host {}'s key is {}",
                            p.spec.host,
                            encode_public(&p.spec.public)
                        )
                    })
                    .unwrap_or_else(|| ", which no live host publishes".into());
                self.note_problem(
                    map,
                    *from.ip(),
                    format!("its handshakes carry public key {presented}{expected}"),
                );
                None
            }
        }
    }

    // ----- timers -----

    pub(super) fn timer_loop(&self) {
        let mut buf = vec![0u8; BUF];
        let mut last_reset = Instant::now();
        loop {
            std::thread::sleep(TIMER_TICK);
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.keys.read().limiter.reset_count();
                last_reset = Instant::now();
            }
            let map = self.peers.read().clone();
            for peer in map.by_host.values() {
                let up = {
                    let mut link = peer.state.link.lock();
                    // A session boringtun gave up on starts over and keeps trying.
                    link.update_timers(
                        &mut buf,
                        |index| self.keys.read().tunn(peer.spec.public, index),
                        |msg| self.udp.send_one(msg, peer.spec.endpoint),
                    );
                    link.has_session()
                };
                self.set_up(peer, up);
            }
        }
    }
}

fn base64_of(bytes: &[u8; 32]) -> String {
    encode_public(&boringtun::x25519::PublicKey::from(*bytes))
}
