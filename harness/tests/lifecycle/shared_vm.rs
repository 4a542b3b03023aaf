//! Two plugins in one VM: a change of one never takes the other's IdP documents.

use super::*;

/// The victim's plugin in [`shared_stack`]: delivered through ECDS, changed by the test.
const VICTIM: &str = "victim";
/// Another plugin in the same VM (same image and VM settings: Envoy shares the VM, as it does for
/// two `WasmPlugin`s of one image on one gateway), configured for the same issuer but through a
/// cluster of its own, [`ROGUE`], which answers with documents of its choosing.
const TENANT: &str = "tenant";
const ROGUE: &str = "rogue";
/// Where the rogue documents send a login.
const PHISH: &str = "https://phish.example/authorize";

/// Two plugins sharing one VM: [`VICTIM`] with the IdP, [`TENANT`] with the same issuer through
/// [`ROGUE`]; and the rogue server, which serves, for any path, one JSON document that is both a
/// discovery document for the stack's issuer (its endpoints elsewhere) and a JWKS.
fn shared_stack() -> &'static (Stack, harness::FaultProxy) {
    static STACK: OnceLock<(Stack, harness::FaultProxy)> = OnceLock::new();
    STACK.get_or_init(|| {
        let rogue = harness::FaultProxy::bind(([127, 0, 0, 1], 0).into()).unwrap();
        rogue.set_mode(Mode::Refuse);
        let shared = |s: SiteSpec| SiteSpec {
            shared_vm: Some("gateway".into()),
            ..s
        };
        let tenant = SiteSpec {
            clusters: vec![(ROGUE.into(), rogue.addr())],
            ..shared(SiteSpec::new(TENANT).filter(json!({"idp_cluster": ROGUE})))
        };
        let victim = SiteSpec {
            ecds: true,
            ..shared(SiteSpec::new(VICTIM))
        };
        let stack = Stack::start(StackSpec::new("lifecycle-shared", vec![tenant, victim])).unwrap();
        let mut doc: Value =
            serde_json::from_str(include_str!("../../../testdata/jwks/keys.json")).unwrap();
        doc["issuer"] = json!(stack.issuer());
        doc["authorization_endpoint"] = json!(PHISH);
        doc["token_endpoint"] = json!("https://phish.example/token");
        doc["jwks_uri"] = json!("https://phish.example/jwks");
        rogue.set_mode(Mode::respond(200, "application/json", &doc.to_string()));
        stack.wait_ready(VICTIM).unwrap();
        (stack, rogue)
    })
}

/// Where `site`'s `/login` sends a client without Fetch Metadata (straight to the authorization
/// endpoint), or its status when it does not redirect.
fn login_goes_to(stack: &Stack, site: &str) -> String {
    let r = Browser::new()
        .get(&stack.site(site).unwrap().url("/login"))
        .unwrap();
    r.location().unwrap_or_else(|| r.status.to_string())
}

/// Found in review (of the fix above): a new configuration started from whatever root context in the
/// VM had documents for the same issuer string, though that root may belong to another plugin, and
/// fetch through another cluster. Here another plugin in the shared VM names the same issuer through a
/// cluster that serves forged documents (discovery accepts them: it checks only the `issuer` field);
/// after the victim's own configuration changed (its issuer and cluster unchanged), its logins went to
/// the forged authorization endpoint and its ID tokens were checked against the forged keys. Only a
/// site of the same issuer and the same cluster now lends its documents.
#[test]
fn a_change_never_takes_another_plugins_documents() {
    let (stack, _rogue) = shared_stack();
    // The tenant's root context has loaded the forged documents through its cluster.
    poll(Duration::from_secs(45), || {
        Ok((0..6)
            .all(|_| login_goes_to(stack, TENANT).starts_with(PHISH))
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("the tenant never loaded the rogue documents: {e:#}"));
    let genuine = format!("{}/", stack.issuer());
    assert!(login_goes_to(stack, VICTIM).starts_with(&genuine));
    // A session on the victim, whose identity headers say which configuration answered.
    let alice = {
        let _idp = idp_hold::shared();
        Browser::logged_in(&stack.site(VICTIM).unwrap().url("/"), "alice").unwrap()
    };
    let cookie = session_cookies(&alice);
    let changed_to = |n: u32| {
        let r = Browser::new()
            .get_with(
                &stack.site(VICTIM).unwrap().url("/x"),
                &[("cookie", &cookie), ("accept", "application/json")],
            )
            .unwrap();
        upstream_headers(&r).is_some_and(|h| h[format!("x-change-{n}")] == "alice")
    };

    // The victim's operator edits its configuration a few times (its issuer and cluster unchanged).
    // Which root a new one copies depends on their order in the VM: after the first change, the
    // victim's oldest root context is let go, and the tenant's comes first.
    let mut seen = Vec::new();
    for n in 0..3 {
        let s = stack;
        let before = s.ecds_counts(VICTIM).unwrap();
        let mut c = s.site(VICTIM).unwrap().filter_config.clone();
        merge_json(
            &mut c,
            &json!({"identity_headers": {(format!("x-change-{n}")): "preferred_username"}}),
        );
        s.update_filter_config(VICTIM, c).unwrap();
        assert_eq!(s.ecds_outcome(VICTIM, before).unwrap(), Update::Applied);
        // Both workers on the new configuration (it answers them), then a few more ticks for old
        // roots to be let go.
        stack
            .until_every_worker(VICTIM, Duration::from_secs(15), || changed_to(n))
            .unwrap_or_else(|e| panic!("change {n}: {e:#}"));
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            seen.push(login_goes_to(stack, VICTIM));
            thread::sleep(Duration::from_millis(100));
        }
    }
    let forged: Vec<_> = seen.iter().filter(|l| !l.starts_with(&genuine)).collect();
    assert!(
        forged.is_empty(),
        "after its own configuration changed, the victim sent {} of {} logins elsewhere than its \
         IdP: {:?}",
        forged.len(),
        seen.len(),
        forged.first()
    );
}
