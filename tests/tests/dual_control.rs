//! Dual control end to end (rule 7) with the production default: rotating and
//! destroying card-access keys and creating or widening supply tie-ups are held
//! for a second, different officer. Real server, token, SQLite and PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use brandkms::config::ServiceSettings;
use brandkms_clients::Client;
use brandkms_proto::v1 as pb;
use brandkms_tests::{TestServer, audit_records, status_of};
use tonic::Code;

fn rotate(alias: &str) -> pb::RotateKeyRequest {
    pb::RotateKeyRequest {
        alias: alias.into(),
    }
}

fn approve(id: &str) -> pb::ApprovalRef {
    pb::ApprovalRef { id: id.into() }
}

fn tie_key(alias: &str, mode: pb::TieUpMode) -> pb::TieUpKey {
    pb::TieUpKey {
        alias: alias.into(),
        mode: mode as i32,
    }
}

async fn versions(officer: &Client, alias: &str) -> Vec<pb::KeyVersion> {
    officer
        .admin()
        .get_key(pb::GetKeyRequest {
            alias: alias.into(),
        })
        .await
        .unwrap()
        .versions
}

async fn approvals(officer: &Client, state: pb::ApprovalState) -> Vec<pb::Approval> {
    officer
        .admin()
        .list_approvals(pb::ListApprovalsRequest {
            state: state as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .approvals
}

async fn setup(officer: &Client) {
    let mut admin = officer.admin();
    for alias in ["key-a", "key-b"] {
        admin
            .create_key(pb::CreateKeyRequest {
                alias: alias.into(),
                service_code: 0x0A01,
                purpose: pb::Purpose::Load as i32,
                exportable: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (id, kind) in [
        ("bank-center-b", pb::EntityKind::BankCenter),
        ("issuer-2-3", pb::EntityKind::Issuer),
    ] {
        admin
            .register_entity(pb::RegisterEntityRequest {
                id: id.into(),
                kind: kind as i32,
                name: id.into(),
                online: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_second_officer_must_approve_and_cannot_be_the_first() {
    for db in brandkms::testing::databases().await {
        let s = TestServer::start_with(db, ServiceSettings::default()).await;
        let officer_1 = s.client("officer-1").await;
        let officer_2 = s.client("officer-2").await;
        setup(&officer_1).await;

        // One officer alone cannot rotate a card-access key: the call is held.
        let held = officer_1
            .admin()
            .rotate_key(rotate("key-a"))
            .await
            .unwrap()
            .pending()
            .expect("rotation held for a second officer");
        assert_eq!(held.operation, "Admin/RotateKey");
        assert_eq!(held.rule, "rotate_key");
        assert_eq!(held.proposer, "officer-1");
        assert_eq!(held.state, pb::ApprovalState::Pending as i32);
        assert_eq!(held.expires_at - held.created_at, 86_400_000);
        assert!(held.summary.contains("key-a"), "{}", held.summary);
        assert_eq!(
            versions(&officer_1, "key-a").await.len(),
            1,
            "{}",
            s.backend
        );
        let pending = approvals(&officer_2, pb::ApprovalState::Pending).await;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, held.id);

        // Self-approval is refused naming rule 7; a participant is not an officer.
        let (c, m) = status_of(officer_1.admin().approve(approve(&held.id)).await);
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 7 (self_approval)"), "{m}");
        let issuer = s.client("issuer-2-3").await;
        let (c, m) = status_of(issuer.admin().approve(approve(&held.id)).await);
        assert_eq!(c, Code::PermissionDenied);
        assert!(m.starts_with("rule 7 (officer_role_required)"), "{m}");
        assert_eq!(versions(&officer_1, "key-a").await.len(), 1);

        // Bad ids.
        let (c, _) = status_of(officer_2.admin().approve(approve("ap-000000000000")).await);
        assert_eq!(c, Code::NotFound);
        let (c, _) = status_of(officer_2.admin().approve(approve("AP 1")).await);
        assert_eq!(c, Code::InvalidArgument);

        // The second officer approves: it rotates, and the approval closes.
        let done = officer_2.admin().approve(approve(&held.id)).await.unwrap();
        let approval = done.approval.unwrap();
        assert_eq!(approval.state, pb::ApprovalState::Approved as i32);
        assert_eq!(approval.decided_by, "officer-2");
        let Some(pb::approve_response::Result::Key(key)) = done.result else {
            panic!("a key");
        };
        let states: Vec<i32> = key.versions.iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [pb::KeyState::AuthOnly as i32, pb::KeyState::Active as i32]
        );
        let (c, m) = status_of(officer_2.admin().approve(approve(&held.id)).await);
        assert_eq!(c, Code::FailedPrecondition);
        assert!(m.contains("already approved by officer-2"), "{m}");
        assert_eq!(versions(&officer_1, "key-a").await.len(), 2);

        // All of it is in the audit trail.
        let rotations = audit_records(&officer_1, "Admin/RotateKey").await;
        let outcomes: Vec<(&str, i32)> = rotations
            .iter()
            .map(|r| (r.caller.as_str(), r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("officer-1", pb::AuditOutcome::Held as i32),
                ("officer-2", pb::AuditOutcome::Allowed as i32)
            ],
            "{rotations:?}"
        );
        assert!(
            rotations[1]
                .reason
                .contains(&format!("approves {} proposed by officer-1", held.id)),
            "{}",
            rotations[1].reason
        );
        assert_eq!(rotations[1].key_version, Some(2));
        let refusals = audit_records(&officer_1, "Admin/Approve").await;
        assert!(refusals.iter().any(|r| r.caller == "officer-1"
            && r.outcome == pb::AuditOutcome::Denied as i32
            && r.reason.contains("self_approval")));

        // An expired proposal is refused and nothing runs.
        let stale = officer_1
            .admin()
            .rotate_key(rotate("key-a"))
            .await
            .unwrap()
            .pending()
            .unwrap();
        s.state.clock.advance(Duration::from_secs(86_400 + 60));
        let (c, m) = status_of(officer_2.admin().approve(approve(&stale.id)).await);
        assert_eq!(c, Code::FailedPrecondition);
        assert!(m.contains("expired"), "{m}");
        let expired = approvals(&officer_2, pb::ApprovalState::Expired).await;
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, stale.id);
        assert!(
            approvals(&officer_2, pb::ApprovalState::Pending)
                .await
                .is_empty()
        );
        assert_eq!(versions(&officer_1, "key-a").await.len(), 2);

        // A rejected proposal cannot be approved afterwards.
        let unwanted = officer_1
            .admin()
            .rotate_key(rotate("key-b"))
            .await
            .unwrap()
            .pending()
            .unwrap();
        let rejected = officer_2
            .admin()
            .reject(pb::RejectRequest {
                id: unwanted.id.clone(),
                reason: "not scheduled this quarter".into(),
            })
            .await
            .unwrap();
        assert_eq!(rejected.state, pb::ApprovalState::Rejected as i32);
        assert_eq!(rejected.reason, "not scheduled this quarter");
        let (c, m) = status_of(officer_2.admin().approve(approve(&unwanted.id)).await);
        assert_eq!(c, Code::FailedPrecondition);
        assert!(m.contains("rejected by officer-2"), "{m}");
        assert_eq!(versions(&officer_1, "key-b").await.len(), 1);

        let verified = officer_1
            .admin()
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap();
        assert!(verified.intact, "{}", verified.problem);
        s.stop().await;
    }
}

#[tokio::test]
async fn supply_tie_ups_and_destruction_are_held_too() {
    for db in brandkms::testing::databases().await {
        let s = TestServer::start_with(db, ServiceSettings::default()).await;
        let officer_1 = s.client("officer-1").await;
        let officer_2 = s.client("officer-2").await;
        setup(&officer_1).await;
        let mut admin = officer_1.admin();

        // A hold-only tie-up is not sensitive; a supply tie-up is.
        let hold = admin
            .create_tie_up(pb::CreateTieUpRequest {
                entity_id: "bank-center-b".into(),
                keys: vec![tie_key("key-a", pb::TieUpMode::Hold)],
                ..Default::default()
            })
            .await
            .unwrap()
            .done()
            .expect("hold-only tie-up runs at once");
        let supply = pb::CreateTieUpRequest {
            entity_id: "bank-center-b".into(),
            keys: vec![tie_key("key-b", pb::TieUpMode::Supply)],
            ..Default::default()
        };
        let held = admin
            .create_tie_up(supply.clone())
            .await
            .unwrap()
            .pending()
            .expect("supply tie-up held");
        assert_eq!(held.rule, "create_supply_tie_up");
        let listed = |o: &Client| {
            let o = o.clone();
            async move {
                o.admin()
                    .list_tie_ups(pb::ListTieUpsRequest::default())
                    .await
                    .unwrap()
                    .tie_ups
            }
        };
        assert_eq!(listed(&officer_1).await.len(), 1);
        // A proposal is checked now: an unknown entity is refused, not proposed.
        let (c, _) = status_of(
            admin
                .create_tie_up(pb::CreateTieUpRequest {
                    entity_id: "nobody".into(),
                    ..supply.clone()
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument);
        let r = officer_2.admin().approve(approve(&held.id)).await.unwrap();
        assert!(matches!(
            r.result,
            Some(pb::approve_response::Result::TieUp(_))
        ));
        assert_eq!(listed(&officer_1).await.len(), 2);

        // Widening a tie-up's supply is held; narrowing runs.
        let widen = admin
            .update_tie_up(pb::UpdateTieUpRequest {
                id: hold.id.clone(),
                keys: vec![tie_key("key-a", pb::TieUpMode::Supply)],
                ..Default::default()
            })
            .await
            .unwrap()
            .pending()
            .expect("widening held");
        assert_eq!(widen.rule, "widen_supply_tie_up");
        let narrowed = admin
            .update_tie_up(pb::UpdateTieUpRequest {
                id: hold.id.clone(),
                per_transaction_limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap()
            .done()
            .expect("not a widening");
        assert_eq!(narrowed.keys[0].mode, pb::TieUpMode::Hold as i32);
        officer_2.admin().approve(approve(&widen.id)).await.unwrap();
        let now_supplied = listed(&officer_1)
            .await
            .into_iter()
            .find(|t| t.id == hold.id)
            .unwrap();
        assert_eq!(now_supplied.keys[0].mode, pb::TieUpMode::Supply as i32);
        assert_eq!(now_supplied.per_transaction_limit, Some(10_000));

        // Destruction: a retired card-access version is scheduled only once approved.
        admin
            .set_key_version_state(pb::SetKeyVersionStateRequest {
                alias: "key-a".into(),
                version: 1,
                state: pb::KeyState::Retired as i32,
            })
            .await
            .unwrap();
        let destroy = pb::ScheduleKeyVersionDestructionRequest {
            alias: "key-a".into(),
            version: 1,
            waiting_days: Some(2),
        };
        let (c, _) = status_of(
            admin
                .schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest {
                    version: 9,
                    ..destroy.clone()
                })
                .await,
        );
        assert_eq!(c, Code::NotFound);
        let held = admin
            .schedule_key_version_destruction(destroy)
            .await
            .unwrap()
            .pending()
            .expect("destruction held");
        assert_eq!(
            versions(&officer_1, "key-a").await[0].state,
            pb::KeyState::Retired as i32
        );
        // The proposer may withdraw it; then approved by nobody.
        let withdrawn = admin
            .reject(pb::RejectRequest {
                id: held.id.clone(),
                reason: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(withdrawn.decided_by, "officer-1");
        let held = admin
            .schedule_key_version_destruction(pb::ScheduleKeyVersionDestructionRequest {
                alias: "key-a".into(),
                version: 1,
                waiting_days: Some(2),
            })
            .await
            .unwrap()
            .pending()
            .unwrap();
        officer_2.admin().approve(approve(&held.id)).await.unwrap();
        let v1 = &versions(&officer_1, "key-a").await[0];
        assert_eq!(v1.state, pb::KeyState::PendingDestruction as i32);
        assert_eq!(v1.destroy_after - v1.state_changed_at, 2 * 86_400_000);
        s.stop().await;
    }
}

/// A brand certificate for `id` in the server's PKI directory (as the brand CA
/// would issue it once the officer is registered).
fn issue_certificate(s: &TestServer, id: &str) {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(s.pki.join("ca-key.pem")).unwrap())
        .unwrap();
    let ca = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(s.pki.join("ca.pem")).unwrap(),
        key,
    )
    .unwrap();
    let (cert, key) = brandkms::commands::dev::client_certificate(id, &ca).unwrap();
    std::fs::write(s.pki.join(format!("{id}.pem")), cert).unwrap();
    std::fs::write(s.pki.join(format!("{id}-key.pem")), key).unwrap();
}

fn officer_request(id: &str) -> pb::RegisterEntityRequest {
    pb::RegisterEntityRequest {
        id: id.into(),
        kind: pb::EntityKind::Officer as i32,
        name: format!("officer {id}"),
        ..Default::default()
    }
}

async fn dual_control_set(officer: &Client) -> Vec<String> {
    officer
        .admin()
        .get_dual_control(pb::GetDualControlRequest {})
        .await
        .unwrap()
        .operations
}

/// Issue 12, item 3: officer-1 registered officer-9, obtained a certificate
/// for it, proposed a rotation and approved it as officer-9. Registering an
/// officer, resuming one and changing the dual-control set are now held, and
/// the second officer must predate the proposal.
#[tokio::test]
async fn one_officer_cannot_make_a_second_officer_or_turn_dual_control_off() {
    for db in brandkms::testing::databases().await {
        let s = TestServer::start_with(db, ServiceSettings::default()).await;
        let officer_1 = s.client("officer-1").await;
        let officer_2 = s.client("officer-2").await;
        setup(&officer_1).await;
        let all: Vec<String> = brandkms_policy::SensitiveOperation::ALL
            .iter()
            .map(|o| o.as_str().to_string())
            .collect();
        assert_eq!(dual_control_set(&officer_1).await, all);

        // RegisterEntity does not register officers; RegisterOfficer is held.
        let (code, message) = status_of(
            officer_1
                .admin()
                .register_entity(officer_request("officer-9"))
                .await,
        );
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("RegisterOfficer"), "{message}");
        let registration = officer_1
            .admin()
            .register_officer(officer_request("officer-9"))
            .await
            .unwrap()
            .pending()
            .expect("registering an officer is held");
        assert_eq!(registration.rule, "register_officer");
        issue_certificate(&s, "officer-9");
        let officer_9 = s.client("officer-9").await;
        let (code, _) = status_of(officer_9.admin().list_keys(Default::default()).await);
        assert_eq!(code, Code::Unauthenticated, "not registered yet");

        // Meanwhile officer-1 proposes a rotation.
        let rotation = officer_1
            .admin()
            .rotate_key(rotate("key-a"))
            .await
            .unwrap()
            .pending()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A genuine second officer approves the registration...
        let approved = officer_2
            .admin()
            .approve(approve(&registration.id))
            .await
            .unwrap();
        assert!(matches!(
            approved.result,
            Some(pb::approve_response::Result::Entity(ref e)) if e.id == "officer-9"
        ));
        // ...but officer-9, registered after the rotation was proposed, cannot be
        // its second officer.
        let refused =
            brandkms_tests::refusal_of(officer_9.admin().approve(approve(&rotation.id)).await);
        assert_eq!(
            refused,
            (
                Code::PermissionDenied,
                "approver_newer_than_proposal".into()
            )
        );
        assert_eq!(versions(&officer_1, "key-a").await.len(), 1);

        // Turning dual control off is itself held.
        let off = officer_1
            .admin()
            .set_dual_control(pb::SetDualControlRequest { operations: vec![] })
            .await
            .unwrap()
            .pending()
            .expect("changing dual control is held");
        assert_eq!(off.rule, "set_dual_control");
        assert_eq!(dual_control_set(&officer_2).await, all);
        let (code, message) = status_of(
            officer_1
                .admin()
                .set_dual_control(pb::SetDualControlRequest {
                    operations: vec!["rotate".into()],
                })
                .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{message}");

        // Resuming a suspended officer is held; ResumeEntity refuses officers.
        officer_1
            .admin()
            .suspend_entity(pb::EntityRef {
                id: "officer-2".into(),
            })
            .await
            .unwrap();
        let (code, message) = status_of(
            officer_1
                .admin()
                .resume_entity(pb::EntityRef {
                    id: "officer-2".into(),
                })
                .await,
        );
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        let resume = officer_1
            .admin()
            .resume_officer(pb::EntityRef {
                id: "officer-2".into(),
            })
            .await
            .unwrap()
            .pending()
            .expect("resuming an officer is held");
        assert_eq!(resume.rule, "resume_officer");
        s.stop().await;
    }
}

/// The dual-control set lives in the database: an instance started with a
/// configuration that turns dual control off still holds what the database says.
#[tokio::test]
async fn an_instance_configured_without_dual_control_applies_the_databases_set() {
    for db in brandkms::testing::databases().await {
        let s = TestServer::start_with(db, ServiceSettings::default()).await;
        setup(&s.client("officer-1").await).await;
        let s = s.restart_with(TestServer::single_officer()).await;
        let officer_1 = s.client("officer-1").await;
        let held = officer_1
            .admin()
            .rotate_key(rotate("key-a"))
            .await
            .unwrap()
            .pending();
        assert!(
            held.is_some(),
            "{}: rotation ran without a second officer",
            s.backend
        );
        assert_eq!(
            dual_control_set(&officer_1).await.len(),
            brandkms_policy::SensitiveOperation::ALL.len()
        );
        s.stop().await;
    }
}
