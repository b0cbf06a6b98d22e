//! rnetd on a real etcd that demands TLS client certificates (`--client-cert-auth`), with
//! a CA and certificates the test makes itself: the right certificates work; plain HTTP,
//! a certificate from another CA, an untrusted etcd certificate and a wrong password are
//! refused at start with a message that says what to fix; and with etcd's auth on, one
//! role per host lets a host write its own records and not another host's.
//!
//! etcd listens on the underlay address of a simulated host (198.18.0.0/15, inside the
//! host's namespace), where that host's rnetd reaches it.
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, ChildGuard, Host, RunScratch};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A refused rnetd must exit well within this (it fails before serving anything).
const FAIL_FAST: Duration = Duration::from_secs(10);

/// A CA: its parameters and key, to sign with.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    /// A self-signed CA; its certificate is written to DIR/NAME.crt.
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        Ca { params, key }
    }

    /// A certificate for `cn` (server and client use), valid for `ips`; written to
    /// DIR/FILE.crt and DIR/FILE.key. Returns (cert, key) paths.
    fn issue(&self, dir: &Path, file: &str, cn: &str, ips: &[Ipv4Addr]) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = ips
            .iter()
            .map(|ip| SanType::IpAddress(IpAddr::V4(*ip)))
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A host namespace running a TLS etcd on its underlay address, and the certificates.
struct TlsEtcd {
    // Field order is drop order: etcd goes before its namespace.
    _etcd: ChildGuard,
    host: Host,
    pki: tempfile::TempDir,
}

impl TlsEtcd {
    fn start() -> TlsEtcd {
        let host = Host::new("h1");
        let pki = tempfile::tempdir().unwrap();
        let dir = pki.path();
        let ip = host.underlay();
        let ca = Ca::new(dir, "ca");
        ca.issue(dir, "server", "etcd", &[ip, Ipv4Addr::LOCALHOST]);
        for user in ["root", "h1", "h2", "nobody"] {
            ca.issue(dir, user, user, &[]);
        }
        // A CA etcd does not trust, with a client certificate claiming to be h1, and
        // an etcd-like server certificate of its own.
        let rogue = Ca::new(dir, "rogue");
        rogue.issue(dir, "rogue-h1", "h1", &[]);
        let url = format!("https://{ip}:2379");
        let peer = "http://127.0.0.1:2380";
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.netns_path().display()))
            .args(["--", "etcd", "--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args([
                "--client-cert-auth",
                "--trusted-ca-file",
                s(&dir.join("ca.crt")),
            ])
            .args(["--cert-file", s(&dir.join("server.crt"))])
            .args(["--key-file", s(&dir.join("server.key"))])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        let etcd = TlsEtcd {
            _etcd: ChildGuard(child),
            host,
            pki,
        };
        wait_until("the TLS etcd answers", Duration::from_secs(30), || {
            etcd.etcdctl("root", &["endpoint", "health"])
                .status
                .success()
        });
        etcd
    }

    fn url(&self) -> String {
        format!("https://{}:2379", self.host.underlay())
    }

    fn file(&self, name: &str) -> String {
        s(&self.pki.path().join(name)).to_string()
    }

    /// etcdctl in the host's namespace with `user`'s certificate.
    fn etcdctl(&self, user: &str, args: &[&str]) -> Output {
        let (ca, cert, key) = (
            self.file("ca.crt"),
            self.file(&format!("{user}.crt")),
            self.file(&format!("{user}.key")),
        );
        let url = self.url();
        let mut argv = vec!["etcdctl", "--endpoints", &url, "--cacert", &ca];
        argv.extend(["--cert", &cert, "--key", &key]);
        argv.extend_from_slice(args);
        self.host.exec(&argv)
    }

    fn etcdctl_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.etcdctl(user, args);
        assert!(
            out.status.success(),
            "etcdctl as {user} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The rnetd flags of `user`'s certificate.
    fn cert_flags(&self, user: &str) -> Vec<String> {
        vec![
            "--store".into(),
            self.url(),
            "--etcd-cacert".into(),
            self.file("ca.crt"),
            "--etcd-cert".into(),
            self.file(&format!("{user}.crt")),
            "--etcd-key".into(),
            self.file(&format!("{user}.key")),
        ]
    }

    /// Run a second rnetd (own socket and dirs) in the host namespace with `env` and
    /// `args`, expecting it to be refused at start: returns its stderr.
    fn refused(&self, env: &[&str], args: &[String]) -> String {
        let dir = RunScratch::new();
        let d = |n: &str| s(&dir.path().join(n)).to_string();
        let underlay = self.host.underlay().to_string();
        let mut argv: Vec<String> = ["env"].iter().map(|a| a.to_string()).collect();
        argv.extend(env.iter().map(|e| e.to_string()));
        // `timeout` bounds a daemon that wrongly starts serving.
        argv.extend(["timeout", "30", env!("CARGO_BIN_EXE_rnetd")].map(String::from));
        argv.extend([
            "--socket".into(),
            d("sock"),
            "--state-dir".into(),
            d("state"),
        ]);
        argv.extend([
            "--run-dir".into(),
            d("run"),
            "--host-id".into(),
            "h9".into(),
        ]);
        argv.extend(["--underlay".into(), underlay]);
        argv.extend(["--docker-plugin-dir".into(), "none".into()]);
        argv.extend(args.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = self.host.exec(&argv);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && out.status.code() != Some(124),
            "rnetd {args:?} was not refused ({}):\n{stderr}",
            out.status
        );
        assert!(took < FAIL_FAST, "refusing took {took:?}:\n{stderr}");
        stderr
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn rnetd_works_over_tls_and_refuses_what_tls_would_not_trust() {
    let mut etcd = TlsEtcd::start();
    let flags = etcd.cert_flags("h1");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    etcd.host.start_daemon_with(&flags);
    etcd.host
        .rnet_ok(&["create", "blue", "--subnet", "10.77.0.0/24"]);
    assert!(etcd.host.rnet_ok(&["ls"]).contains("blue"));
    let stored = etcd.etcdctl_ok(
        "root",
        &["get", "/rnet/v1/networks/blue", "--print-value-only"],
    );
    assert!(stored.contains("10.77.0.0/24"), "{stored}");
    wait_until("h1 registers", Duration::from_secs(10), || {
        etcd.etcdctl_ok("root", &["get", "/rnet/v1/hosts/h1", "--keys-only"])
            .contains("/rnet/v1/hosts/h1")
    });

    // Plain HTTP to the TLS port: etcd just drops the connection; rnetd says why.
    let ip = etcd.host.underlay();
    for store in [format!("etcd://{ip}:2379"), format!("http://{ip}:2379")] {
        let err = etcd.refused(&[], &["--store".into(), store.clone()]);
        assert!(
            err.contains(&format!("etcd at {ip}:2379 speaks TLS"))
                && err.contains(&format!("https://{ip}:2379"))
                && err.contains("--etcd-cacert"),
            "{store}: {err}"
        );
    }

    // A client certificate from a CA etcd does not trust (claiming to be h1).
    let mut rogue = etcd.cert_flags("h1");
    rogue[5] = etcd.file("rogue-h1.crt");
    rogue[7] = etcd.file("rogue-h1.key");
    let err = etcd.refused(&[], &rogue);
    assert!(err.contains("refused this client's certificate"), "{err}");
    // No client certificate at all.
    let err = etcd.refused(&[], &etcd.cert_flags("h1")[..4]);
    assert!(
        err.contains("requires a client certificate")
            || err.contains("refused this client's certificate"),
        "{err}"
    );
    // etcd's self-made certificate checked against the system roots (no --etcd-cacert),
    // and against the wrong CA.
    let mut no_ca = etcd.cert_flags("h1");
    no_ca.drain(2..4);
    let err = etcd.refused(&[], &no_ca);
    assert!(
        err.contains("etcd's certificate is not trusted") && err.contains("--etcd-cacert"),
        "{err}"
    );
    let mut wrong_ca = etcd.cert_flags("h1");
    wrong_ca[3] = etcd.file("rogue.crt");
    let err = etcd.refused(&[], &wrong_ca);
    assert!(err.contains("did not sign it"), "{err}");
    // Mismatched options never reach etcd.
    let err = etcd.refused(&[], &etcd.cert_flags("h1")[..6]);
    assert!(err.contains("--etcd-cert needs --etcd-key"), "{err}");
    let mut tls_files_plain = etcd.cert_flags("h1");
    tls_files_plain[1] = format!("etcd://{ip}:2379");
    let err = etcd.refused(&[], &tls_files_plain);
    assert!(err.contains("use https://HOST:PORT"), "{err}");

    // The running daemon was never disturbed.
    assert!(etcd.host.daemon_running());
    assert!(etcd.host.rnet_ok(&["ls"]).contains("blue"));
}

/// etcd's auth on, with one role per host (the recipe of docs/etcd-tls.md).
fn enable_roles(etcd: &TlsEtcd) {
    let root = |args: &[&str]| etcd.etcdctl_ok("root", args);
    root(&["user", "add", "root:rootpw"]);
    for host in ["h1", "h2"] {
        let role = format!("rnet-host-{host}");
        root(&["user", "add", &format!("{host}:{host}-secret")]);
        root(&["role", "add", &role]);
        root(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "read",
            "/rnet/v1/",
        ]);
        for shared in ["networks/", "vnis/", "endpoints/", "endpoint-ids/"] {
            let prefix = format!("/rnet/v1/{shared}");
            root(&[
                "role",
                "grant-permission",
                &role,
                "--prefix=true",
                "readwrite",
                &prefix,
            ]);
        }
        for own in ["hosts", "host-info"] {
            let key = format!("/rnet/v1/{own}/{host}");
            root(&["role", "grant-permission", &role, "readwrite", &key]);
        }
        root(&["user", "grant-role", host, &role]);
    }
    root(&["auth", "enable"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn etcd_roles_let_a_host_write_only_its_own_records_and_passwords_are_checked() {
    let mut etcd = TlsEtcd::start();
    enable_roles(&etcd);

    // h1's rnetd, known to etcd by its certificate's common name, does its work.
    let flags = etcd.cert_flags("h1");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    etcd.host.start_daemon_with(&flags);
    etcd.host
        .rnet_ok(&["create", "blue", "--subnet", "10.77.0.0/24"]);
    assert!(etcd.host.rnet_ok(&["ls"]).contains("blue"));
    wait_until("h1 registers", Duration::from_secs(10), || {
        etcd.etcdctl("root", &["get", "/rnet/v1/hosts/h1", "--keys-only"])
            .stdout
            .starts_with(b"/rnet/v1/hosts/h1")
    });
    // The same credentials cannot touch h2's records, and can write h1's.
    for key in [
        "/rnet/v1/hosts/h2",
        "/rnet/v1/host-info/h2",
        "/rnet/v1/junk",
    ] {
        let out = etcd.etcdctl("h1", &["put", key, "forged"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("permission denied"),
            "{key}: {err}"
        );
    }
    etcd.etcdctl_ok("h2", &["put", "/rnet/v1/host-info/h2", "{}"]);
    assert!(etcd
        .etcdctl_ok(
            "h1",
            &["get", "/rnet/v1/host-info/h2", "--print-value-only"]
        )
        .contains("{}"));
    // A host that claims another host's id is refused by etcd, and says so clearly.
    let mut as_h2 = etcd.cert_flags("h1");
    as_h2.extend(strings(&["--host-id", "h2"]));
    etcd.host.kill_daemon(nix::sys::signal::Signal::SIGTERM);
    let dir = RunScratch::new();
    let log = std::fs::File::create(dir.path().join("h2.log")).unwrap();
    let d = |n: &str| s(&dir.path().join(n)).to_string();
    let underlay = etcd.host.underlay().to_string();
    let mut argv = strings(&[env!("CARGO_BIN_EXE_rnetd"), "--underlay", &underlay]);
    argv.extend([
        "--socket".into(),
        d("sock"),
        "--state-dir".into(),
        d("state"),
    ]);
    argv.extend([
        "--run-dir".into(),
        d("run"),
        "--docker-plugin-dir".into(),
        "none".into(),
    ]);
    argv.extend(as_h2);
    let child = Command::new("nsenter")
        .arg(format!("--net={}", etcd.host.netns_path().display()))
        .arg("--")
        .args(&argv)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _impostor = ChildGuard(child);
    wait_until(
        "the impostor is refused writing h2's records",
        Duration::from_secs(15),
        || {
            let log = std::fs::read_to_string(dir.path().join("h2.log")).unwrap_or_default();
            log.contains("publishing host record failed")
                && log.contains("permission denied to the user named by the common name")
        },
    );
    assert_eq!(
        etcd.etcdctl_ok(
            "root",
            &["get", "/rnet/v1/host-info/h2", "--print-value-only"]
        )
        .trim(),
        "{}",
        "h2's record is untouched"
    );
    drop(_impostor);

    // User and password (the certificate's common name is no user): right password works,
    // from the environment or the flag; a wrong one is refused at start.
    let mut nobody = etcd.cert_flags("nobody");
    nobody.extend(strings(&["--etcd-user", "h1"]));
    let err = etcd.refused(&["RNET_ETCD_PASSWORD=wrong"], &nobody);
    assert!(
        err.contains("etcd refused user \"h1\": wrong user name or password")
            && !err.contains("wrong\""),
        "{err}"
    );
    let err = etcd.refused(&[], &nobody);
    assert!(err.contains("RNET_ETCD_PASSWORD"), "{err}");
    let mut with_password = etcd.cert_flags("nobody");
    with_password.extend(strings(&["--etcd-user", "h1:h1-secret"]));
    let flags: Vec<&str> = with_password.iter().map(String::as_str).collect();
    etcd.host.start_daemon_with(&flags);
    etcd.host
        .rnet_ok(&["create", "green", "--subnet", "10.78.0.0/24"]);
    let ls = etcd.host.rnet_ok(&["ls"]);
    assert!(ls.contains("blue") && ls.contains("green"), "{ls}");
    assert!(
        !etcd.host.daemon_log().contains("h1-secret"),
        "the password was logged"
    );
    // Without the password (the certificate alone), "nobody" may not even read.
    let out = etcd.etcdctl("nobody", &["get", "/rnet/v1/networks/blue"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
}
