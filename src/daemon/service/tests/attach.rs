//! Attach rollback: a failure at any step, store or kernel, leaves nothing behind (no
//! record, no address, no veth, no journal entry), and the same attach then succeeds.
//! Steps after the veth exists (egress) are logged, not failed: the attach stands.

use super::*;
use crate::daemon::access::Caller;
use crate::dataplane::fake::Call;

fn req() -> AttachRequest {
    let mut r = attach_req("roll", "eth0");
    r.id = Some("ep-roll".into());
    r
}

/// A fresh host with network `roll`; the index the attach's first step will have.
async fn fresh() -> (Harness, usize) {
    let h = Harness::new().await;
    h.network("roll", "10.74.0.0/24").await;
    let first = h.dp.calls().len();
    (h, first)
}

/// Nothing of the endpoint is left: records, veths, workload interfaces, journal.
async fn assert_nothing_left(h: &Harness, step: &Call) {
    assert_eq!(
        h.endpoint_keys().await,
        Vec::<String>::new(),
        "after {step:?}"
    );
    h.dp.with(|m| {
        assert!(
            m.veths().is_empty(),
            "veths after {step:?}: {:?}",
            m.veths()
        );
        assert!(m.workload.is_empty(), "workload side after {step:?}");
    });
    assert!(h.svc.journal.entries().is_empty(), "journal after {step:?}");
}

#[tokio::test]
async fn a_failure_at_any_step_of_an_attach_leaves_nothing_behind() {
    // A clean attach names the steps.
    let (h, first) = fresh().await;
    h.svc.attach(&req(), Caller::ROOT).await.unwrap();
    let steps: Vec<Call> = h.dp.calls()[first..].to_vec();
    let wired = steps
        .iter()
        .position(|c| c.op == "attach")
        .expect("the veth step");
    assert!(steps.iter().any(|c| c.op == "ensure_sandbox"), "{steps:?}");
    assert!(steps.iter().any(|c| c.op == "store.txn"), "{steps:?}");

    for (k, step) in steps.iter().enumerate() {
        let (h, first) = fresh().await;
        h.dp.fail_call(first + k);
        let result = h.svc.attach(&req(), Caller::ROOT).await;
        assert_eq!(
            h.dp.calls()[first + k].op,
            step.op,
            "step {k} is the same step in every run"
        );
        if k <= wired {
            let e = result.expect_err(&format!("a failure at {step:?} fails the attach"));
            assert!(e.to_string().contains("injected"), "{e}");
            assert_nothing_left(&h, step).await;
            // Nothing left blocks the same attach (its id, its address).
            let ep = h.svc.attach(&req(), Caller::ROOT).await.unwrap();
            assert_eq!(ep.id.as_str(), "ep-roll");
        } else {
            // Egress failures are the next reconcile's: the attach stands, whole.
            let ep = result.unwrap_or_else(|e| panic!("{step:?} failing failed the attach: {e}"));
            assert_eq!(h.svc.endpoints(Some("roll")).await.unwrap(), vec![ep]);
            assert_eq!(h.dp.with(|m| m.veths().len()), 1);
        }
    }
}

#[tokio::test]
async fn a_sandbox_that_fails_to_build_is_retried_by_the_next_attach() {
    let (h, _) = fresh().await;
    h.dp.fail_op("ensure_sandbox");
    let step = Call {
        op: "ensure_sandbox",
        target: String::new(),
    };
    h.svc.attach(&req(), Caller::ROOT).await.unwrap_err();
    assert_nothing_left(&h, &step).await;
    assert!(h.dp.with(|m| m.sandboxes.is_empty()));
    h.dp.clear_faults();
    h.svc.attach(&req(), Caller::ROOT).await.unwrap();
    assert_eq!(h.dp.with(|m| m.sandboxes.len()), 1);
}

/// The egress operations among the kernel mutations from index `from` on.
fn egress_ops(h: &Harness, from: usize) -> Vec<&'static str> {
    h.dp.mutations()[from..]
        .iter()
        .map(|c| c.op)
        .filter(|op| ["ensure_uplink", "remove_uplink", "program_nat"].contains(op))
        .collect()
}

#[tokio::test]
async fn the_uplink_is_built_once_per_sandbox_not_once_per_attach() {
    let (h, _) = fresh().await;
    h.svc.attach(&req(), Caller::ROOT).await.unwrap();
    assert_eq!(egress_ops(&h, 0), ["ensure_uplink", "program_nat"]);
    let detach = crate::api::types::DetachRequest {
        network: "roll".into(),
        id: Some("ep-roll".into()),
        ..Default::default()
    };
    // The last endpoint leaves and the next arrives: the uplink and the masquerade stay,
    // and neither the detach nor the attach touches them.
    let before = h.dp.mutations().len();
    h.svc.detach(&detach, Caller::ROOT).await.unwrap();
    h.svc.attach(&req(), Caller::ROOT).await.unwrap();
    assert_eq!(egress_ops(&h, before), Vec::<&str>::new());
    assert_eq!(h.dp.with(|m| m.uplinks.len()), 1);
    // An endpoint that publishes a port changes the NAT table before its attach answers.
    let before = h.dp.mutations().len();
    let mut web = attach_req("roll", "eth1");
    web.id = Some("ep-web".into());
    web.ports = vec!["8080:80".parse().unwrap()];
    h.svc.attach(&web, Caller::ROOT).await.unwrap();
    assert_eq!(egress_ops(&h, before), ["program_nat"]);
}
