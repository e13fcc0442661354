//! gRPC handlers, the second stage of the request path: the server's `auth`
//! layer has identified the caller before any handler runs; handlers convert wire
//! types to domain types (`convert`), call the domain operations in `crate::ops`
//! (which ask the policy through `ops::authorize`), and map the domain error to a
//! status here, in one place. Every request, allowed or refused, is in the audit
//! trail.

pub mod admin;
pub mod card;
pub mod convert;
pub mod distribution;
pub mod paging;
pub mod settlement;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ops::{AppState, Caller, OpsError};

/// The `ErrorInfo.domain` of every refusal this service gives.
pub const ERROR_DOMAIN: &str = "brandkms.v1";

/// The gRPC status for the caller: one exhaustive mapping. A policy refusal
/// carries a `google.rpc.ErrorInfo` whose `reason` is the rule's code (e.g.
/// `limit_exceeded`) and whose metadata names the rule's number, beside the
/// human message.
pub fn to_status(e: &OpsError) -> Status {
    match e {
        OpsError::InvalidArgument(m) => Status::invalid_argument(m),
        OpsError::NotFound(m) => Status::not_found(m),
        OpsError::AlreadyExists(m) => Status::already_exists(m),
        OpsError::FailedPrecondition(m) => Status::failed_precondition(m),
        OpsError::Aborted(m) => Status::aborted(m),
        OpsError::Unavailable(m) => Status::unavailable(m),
        OpsError::ResourceExhausted {
            message,
            retry_after_ms,
        } => {
            let wait =
                std::time::Duration::from_millis(u64::try_from(*retry_after_ms).unwrap_or(0));
            Status::with_error_details(
                Code::ResourceExhausted,
                message.clone(),
                ErrorDetails::with_retry_info(Some(wait)),
            )
        }
        OpsError::Denied(r) => {
            // The rule's number, for the seven rules of docs/design.md §3; the key-state
            // and consent reasons belong to no numbered rule.
            let metadata: std::collections::HashMap<String, String> = (r.rule() > 0)
                .then(|| ("rule".to_string(), r.rule().to_string()))
                .into_iter()
                .collect();
            Status::with_error_details(
                Code::PermissionDenied,
                r.to_string(),
                ErrorDetails::with_error_info(r.code(), ERROR_DOMAIN, metadata),
            )
        }
        OpsError::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            Status::internal("internal error; the server log has the details")
        }
    }
}

/// Runs an operation for `caller`; when it fails, records the failure (with its
/// reason) in a transaction of its own, since nothing else changed, and returns
/// the status. Successful operations record themselves, in their own transaction.
pub async fn audited<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    key: Option<(&str, Option<u32>)>,
    result: Result<T, OpsError>,
) -> Result<T, Status> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            let mut event = caller
                .event(operation)
                .outcome(e.outcome(), Some(e.audit_reason()));
            // A failure closes nothing: the approval stays pending.
            if let Some(closing) = event.closes_approval.take() {
                event.reason = Some(format!(
                    "{}; while carrying out approval {}",
                    e.audit_reason(),
                    closing.id
                ));
            }
            if let Some((alias, version)) = recordable(key) {
                event = event.key(alias, version);
            }
            if let Err(audit_error) = state.auditor.record(&event).await {
                return Err(to_status(&OpsError::from(audit_error)));
            }
            Err(to_status(&e))
        }
    }
}

/// The key an audit record names: only a well-formed alias (a malformed one,
/// refused, is quoted, shortened, in the record's reason instead).
fn recordable(key: Option<(&str, Option<u32>)>) -> Option<(&str, Option<u32>)> {
    key.filter(|(alias, _)| crate::ops::valid_name(alias))
}

/// For reads: records the request (allowed, or failed with its reason) in a
/// transaction of its own and returns the result or the status.
pub async fn audited_read<T>(
    state: &AppState,
    caller: &Caller,
    operation: &str,
    key: Option<(&str, Option<u32>)>,
    result: Result<T, OpsError>,
) -> Result<T, Status> {
    let value = audited(state, caller, operation, key, result).await?;
    let mut event = caller.event(operation);
    if let Some((alias, version)) = recordable(key) {
        event = event.key(alias, version);
    }
    state
        .auditor
        .record(&event)
        .await
        .map_err(|e| to_status(&OpsError::from(e)))?;
    Ok(value)
}

/// The caller the identity layer put in the request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The caller the identity layer put in the request, if it is an officer (rule 7);
/// a refusal is audited.
pub async fn officer<T>(
    state: &AppState,
    request: &tonic::Request<T>,
    operation: &str,
) -> Result<Caller, Status> {
    let caller = caller(request)?;
    let decision = brandkms_policy::can_administer(caller.entity.kind).into_result();
    audited(
        state,
        &caller,
        operation,
        None,
        decision.map_err(OpsError::Denied),
    )
    .await?;
    Ok(caller)
}
