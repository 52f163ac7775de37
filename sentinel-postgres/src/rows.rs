//! Reading rows back into the core's types. A value that does not decode is a corrupt record,
//! never a panic.

use std::str::FromStr;

use sentinel_core::{
    ExecutionRecord, ExecutionState, FencingToken, Fingerprint, Key, LeaseRecord, Namespace,
    OwnerId, RejectReason, Rejection, RequestId, Result, Timestamp, Ttl,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Decode, Postgres, Row, Type};

use crate::error::corrupt;

/// The value of column `name`.
pub(crate) fn get<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(name)
        .map_err(|e| corrupt(format!("column {name}: {e}")))
}

/// The value of a column that must not be NULL.
pub(crate) fn required<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    get::<Option<T>>(row, name)?.ok_or_else(|| corrupt(format!("column {name} is NULL")))
}

pub(crate) fn token(value: i64) -> Result<FencingToken> {
    FencingToken::new(value).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

pub(crate) fn state(value: &str) -> Result<ExecutionState> {
    ExecutionState::from_str(value).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn owner(value: String) -> Result<OwnerId> {
    OwnerId::new(value).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn request_id(bytes: &[u8]) -> Result<RequestId> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("request id has {} bytes; expected 16", bytes.len())))?;
    Ok(RequestId::from_u128(u128::from_be_bytes(array)))
}

pub(crate) fn request_id_bytes(id: RequestId) -> [u8; 16] {
    id.as_u128().to_be_bytes()
}

pub(crate) fn fingerprint(value: String) -> Result<Fingerprint> {
    Fingerprint::new(value).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("stored JSON does not parse: {e}")))
}

fn names(row: &PgRow) -> Result<(Namespace, Key)> {
    let namespace = Namespace::new(required::<String>(row, "namespace")?)
        .map_err(|e| corrupt(e.to_string()))?;
    let key = Key::new(required::<String>(row, "key")?).map_err(|e| corrupt(e.to_string()))?;
    Ok((namespace, key))
}

fn ttl(row: &PgRow) -> Result<Ttl> {
    Ttl::from_micros(required(row, "ttl_us")?, required(row, "hard_ttl_us")?)
        .map_err(|e| corrupt(e.to_string()))
}

/// An execution record from the columns of `inspect.sql` / `list.sql`.
pub(crate) fn execution_record(row: &PgRow) -> Result<ExecutionRecord> {
    let (namespace, key) = names(row)?;
    Ok(ExecutionRecord {
        namespace,
        key,
        state: state(&required::<String>(row, "state")?)?,
        owner: owner(required(row, "owner")?)?,
        token: token(required(row, "token")?)?,
        request_id: get::<Option<Vec<u8>>>(row, "request_id")?
            .map(|b| request_id(&b))
            .transpose()?,
        lease_expires_at: timestamp(required(row, "lease_expires_us")?),
        hard_expires_at: timestamp(required(row, "hard_expires_us")?),
        ttl: ttl(row)?,
        result: get::<Option<String>>(row, "result")?
            .map(|t| json(&t))
            .transpose()?,
        fingerprint: get::<Option<String>>(row, "fingerprint")?
            .map(fingerprint)
            .transpose()?,
        created_at: timestamp(required(row, "created_us")?),
        updated_at: timestamp(required(row, "updated_us")?),
    })
}

/// A lease record from the columns of `inspect_lease.sql` / `list_leases.sql`.
pub(crate) fn lease_record(row: &PgRow) -> Result<LeaseRecord> {
    let (namespace, key) = names(row)?;
    Ok(LeaseRecord {
        namespace,
        key,
        owner: owner(required(row, "owner")?)?,
        token: token(required(row, "token")?)?,
        request_id: request_id(&required::<Vec<u8>>(row, "request_id")?)?,
        lease_expires_at: timestamp(required(row, "lease_expires_us")?),
        hard_expires_at: timestamp(required(row, "hard_expires_us")?),
        ttl: ttl(row)?,
        acquired_at: timestamp(required(row, "acquired_us")?),
    })
}

/// The row of a "verdict" statement (start, complete, abort, reconcile, force_complete, reset,
/// release_lease, fence): `Ok(row)` for a verdict in `accepted`, the core's rejection for any other, `NotFound`
/// when there is no row. `with_state`: the refusal reports the record's state (executions).
pub(crate) fn verdict(row: Option<PgRow>, accepted: &[&str], with_state: bool) -> Result<PgRow> {
    let Some(row) = row else {
        return Err(Rejection::not_found().into());
    };
    let verdict: String = required(&row, "verdict")?;
    if accepted.contains(&verdict.as_str()) {
        Ok(row)
    } else {
        Err(rejection(&verdict, &row, with_state)?.into())
    }
}

/// The completion verdicts that mean the result is recorded: done now, or done before with the
/// same token and result (a repeat, which logs nothing).
pub(crate) const COMPLETED: &[&str] = &["completed", "unchanged"];

/// The rejection named by a statement's `verdict`, with the record's state (if the statement
/// reports one) and token, as the core builds it.
pub(crate) fn rejection(verdict: &str, row: &PgRow, with_state: bool) -> Result<Rejection> {
    let reason = match verdict {
        "not_found" => return Ok(Rejection::not_found()),
        "fenced" => RejectReason::Fenced,
        "expired" => RejectReason::Expired,
        "still_alive" => RejectReason::StillAlive,
        "wrong_state" => RejectReason::WrongState,
        other => return Err(corrupt(format!("unexpected verdict {other:?}"))),
    };
    let state = if with_state {
        Some(state(&required::<String>(row, "state")?)?)
    } else {
        None
    };
    Ok(Rejection {
        reason,
        state,
        token: Some(token(required(row, "token")?)?),
    })
}
