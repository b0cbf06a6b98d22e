//! The Docker driver answers within its deadline whatever the work behind it does, and work
//! that finishes after Docker was told it failed is undone (driven through the plugin's
//! router, as dockerd calls it).

use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::daemon::docker_plugin::{router, Plugin, DEADLINE};

const NETWORK: &str = "d0cker0net";
const ENDPOINT: &str = "5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0ff";

async fn call(r: &axum::Router, method: &str, body: Value) -> Value {
    let req = Request::post(format!("/{method}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A Docker network on rnet network 10.77.0.0/24 and one endpoint at 10.77.0.5, created.
async fn endpoint_created(h: &Harness) -> axum::Router {
    let plugin = Arc::new(Plugin::open(h.svc.clone(), h.dir.path()));
    let r = router(plugin);
    let created = call(
        &r,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NETWORK,
               "IPv4Data": [{"Pool": "10.77.0.0/24", "Gateway": "10.77.0.1/24"}]}),
    )
    .await;
    assert_eq!(created, json!({}));
    let ep = call(
        &r,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": NETWORK, "EndpointID": ENDPOINT,
               "Interface": {"Address": "10.77.0.5/24"}}),
    )
    .await;
    assert!(ep.get("Err").is_none(), "{ep}");
    r
}

fn join() -> Value {
    json!({"NetworkID": NETWORK, "EndpointID": ENDPOINT, "SandboxKey": WORKLOAD})
}

async fn record(h: &Harness) -> Endpoint {
    let net = h.svc.networks().await.unwrap().remove(0);
    h.svc
        .endpoint_by_id(net.name.as_str(), ENDPOINT)
        .await
        .unwrap()
        .expect("the endpoint's record")
        .ep
}

#[tokio::test]
async fn a_join_in_time_leaves_the_workload_end_for_docker_to_move() {
    let h = Harness::new().await;
    let r = endpoint_created(&h).await;
    let joined = call(&r, "NetworkDriver.Join", join()).await;
    let peer = joined["InterfaceName"]["SrcName"]
        .as_str()
        .expect("{joined}");
    h.dp.with(|m| {
        assert!(m.host_peers.contains(peer), "{:?}", m.host_peers);
        assert_eq!(m.veths().len(), 1);
    });
    let ep = record(&h).await;
    assert_eq!(ep.netns, WORKLOAD);
    assert_eq!(ep.ip.ip(), Ipv4Addr::new(10, 77, 0, 5));
}

#[tokio::test]
async fn a_join_that_finishes_after_the_deadline_is_undone() {
    let h = Harness::new().await;
    let r = endpoint_created(&h).await;
    let gate = h.dp.hold("attach_for_move");
    let started = std::time::Instant::now();
    let answer = call(&r, "NetworkDriver.Join", join()).await;
    let took = started.elapsed();
    // Docker hears of the failure at the deadline, not when the work ends.
    let err = answer["Err"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(err.contains("could not finish Join within 2s"), "{err}");
    assert!(took >= DEADLINE && took < DEADLINE * 2, "{took:?}");
    // The work goes on, finishes, and is taken back: no veth, no namespace on the record.
    gate.open();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // The record first: the undo clears it before it removes the veth, so a clean model
        // read after it is the end state (read before it, the veth may not exist yet).
        let unjoined = record(&h).await.netns.is_empty();
        if unjoined
            && h.dp
                .with(|m| m.veths().is_empty() && m.host_peers.is_empty())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the late Join was not undone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let ops: Vec<&str> = h.dp.mutations().iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        ["ensure_sandbox", "attach_for_move", "detach_in_background"]
    );
    // Docker retries the Join: it goes through.
    let joined = call(&r, "NetworkDriver.Join", join()).await;
    assert!(joined.get("Err").is_none(), "{joined}");
    assert_eq!(h.dp.with(|m| m.veths().len()), 1);
}
