use super::*;

/// Run the plugin on an environment and stdin; (exit status, stdout parsed).
fn run(env: &[(&str, &str)], stdin: &str) -> (i32, Option<Value>) {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut out = Vec::new();
    let status = main(&env, &mut stdin.as_bytes(), &mut out);
    let v = (!out.is_empty()).then(|| serde_json::from_slice(&out).expect("stdout is JSON"));
    (status, v)
}

const CONF: &str =
    r#"{"cniVersion":"1.1.0","name":"blue","type":"rnet-cni","socket":"/nonexistent/rnetd.sock"}"#;

#[test]
fn version_answers_every_supported_version() {
    let (st, out) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    let out = out.unwrap();
    assert_eq!(st, 0);
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(
        out["supportedVersions"],
        serde_json::json!(spec::SUPPORTED_VERSIONS)
    );
    let (st, out) = run(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(
        (st, out.unwrap()["cniVersion"].clone()),
        (0, "1.1.0".into())
    );
}

/// Each error class, without a daemon: (env, stdin, expected code).
#[test]
fn error_classes() {
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
    ];
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, u32);
    let cases: Vec<Case> = vec![
        (vec![], CONF.into(), code::INVALID_ENV),
        (
            vec![("CNI_COMMAND", "FROB")],
            CONF.into(),
            code::INVALID_ENV,
        ),
        (add.to_vec(), "{not json".into(), code::DECODE),
        (
            add.to_vec(),
            CONF.replace("1.1.0", "0.2.0"),
            code::INCOMPATIBLE_VERSION,
        ),
        (
            add.to_vec(),
            CONF.replace("\"blue\"", "\"-blue\""),
            code::INVALID_CONFIG,
        ),
        (
            add.to_vec(),
            CONF.replace("\"blue\"", "\"much-too-long-name\""),
            code::INVALID_CONFIG,
        ),
        (
            add.to_vec(),
            CONF.replace("\"type\"", "\"ipam\":{\"type\":\"host-local\"},\"type\""),
            code::INVALID_CONFIG,
        ),
        (add[..3].to_vec(), CONF.into(), code::INVALID_ENV),
        (
            vec![add[0], add[2], add[3], ("CNI_CONTAINERID", "bad/id")],
            CONF.into(),
            code::INVALID_ENV,
        ),
        (
            vec![add[0], add[1], add[3], ("CNI_NETNS", "/nonexistent")],
            CONF.into(),
            code::INVALID_ENV,
        ),
        (
            [add.to_vec(), vec![("CNI_ARGS", "MAC=01:00:5e:00:00:01")]].concat(),
            CONF.into(),
            code::INVALID_ENV,
        ),
        (
            [add.to_vec(), vec![("CNI_ARGS", "IP=10.1.0.5,10.1.0.6")]].concat(),
            CONF.into(),
            code::INVALID_ENV,
        ),
        (add.to_vec(), CONF.into(), code::TRY_AGAIN_LATER),
        (
            vec![("CNI_COMMAND", "STATUS")],
            CONF.into(),
            code::NOT_AVAILABLE,
        ),
        (
            vec![("CNI_COMMAND", "STATUS")],
            CONF.replace("1.1.0", "1.0.0"),
            code::INCOMPATIBLE_VERSION,
        ),
        (
            vec![("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            CONF.into(),
            code::INVALID_CONFIG,
        ),
        (
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/proc/self/ns/net"),
                ("CNI_IFNAME", "eth0"),
            ],
            CONF.replace("1.1.0", "0.3.1"),
            code::INCOMPATIBLE_VERSION,
        ),
    ];
    for (env, stdin, want) in cases {
        let (st, out) = run(&env, &stdin);
        let out = out.unwrap_or_else(|| panic!("no output for {env:?}"));
        assert_eq!(st, 1, "{env:?}: {out}");
        assert_eq!(out["code"], want, "{env:?} {stdin}: {out}");
        assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(out["details"].is_string());
        assert!(out["cniVersion"].is_string());
    }
}
