//! Cluster settings: read (viewer), change (owner), each value checked against the table in
//! [`palisade_raft::model::settings`].

use std::sync::Arc;

use palisade_raft::model::{ClusterSettings, Record, RecordKey, Role};
use poem::http::Method;
use poem::web::{Data, Json};
use poem::{handler, IntoResponse};
use serde_json::json;

use crate::authz::{authorize, Within};
use crate::http::{invalid, Caller, JsonBody};
use crate::openapi::{op, Op, OWNER, VIEWER};
use crate::read::get_record;
use crate::state::AdminState;
use crate::write::{apply, audit, ApiResult};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op(
            Method::GET,
            "/v1/settings",
            VIEWER,
            "Cluster settings",
            get_settings,
        ),
        op(
            Method::PUT,
            "/v1/settings",
            OWNER,
            "Change cluster settings",
            put_settings,
        )
        .json::<ClusterSettings>(),
    ]
}

#[handler]
async fn get_settings(state: Data<&Arc<AdminState>>, caller: Caller) -> ApiResult {
    authorize(&state, &caller, Role::Viewer, Within::Cluster).await?;
    let s = match get_record(&state, &RecordKey::Settings)? {
        Some(Record::Settings(s)) => s,
        _ => ClusterSettings::default(),
    };
    Ok(Json(s).into_response())
}

#[handler]
async fn put_settings(
    state: Data<&Arc<AdminState>>,
    caller: Caller,
    body: JsonBody<ClusterSettings>,
) -> ApiResult {
    let p = authorize(&state, &caller, Role::Owner, Within::Cluster).await?;
    let settings = body.0;
    settings
        .check()
        .map_err(|e| invalid(&format!("values.{}", e.name), e.why))?;
    let entry = audit(&p, &caller, "settings.put", "settings");
    apply(
        &state,
        &caller,
        Record::Settings(settings),
        entry,
        false,
        json!({}),
    )
    .await
}
