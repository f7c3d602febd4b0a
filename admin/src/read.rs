//! The read path routes share: linearizable reads by default (`consistency=local` to read this
//! node's applied state as it is), records by key, and pages of records under a prefix.

use palisade_raft::ids::{Hostname, ProjectId};
use palisade_raft::model::{schema, Domain, Project, Record, RecordKey};
use poem::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::http::{error, invalid};
use crate::state::AdminState;
use crate::write::{cluster_error, internal};

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
pub(crate) struct ReadOpts {
    /// `linearizable` (default) or `local`.
    #[schemars(with = "Option<schema::Consistency>")]
    pub(crate) consistency: Option<String>,
}

pub(crate) async fn read_barrier(
    state: &AdminState,
    consistency: Option<&str>,
) -> poem::Result<()> {
    match consistency {
        None | Some("linearizable") => state
            .cluster
            .linearizable_barrier()
            .await
            .map(|_| ())
            .map_err(cluster_error),
        Some("local") => Ok(()),
        Some(other) => Err(invalid(
            "consistency",
            format!("must be linearizable or local, not {other:?}"),
        )),
    }
}

pub(crate) fn get_record(state: &AdminState, key: &RecordKey) -> poem::Result<Option<Record>> {
    state.cluster.reader.get(key).map_err(internal)
}

pub(crate) fn project(state: &AdminState, id: &ProjectId) -> poem::Result<Project> {
    match get_record(state, &RecordKey::Project { id: id.clone() })? {
        Some(Record::Project(p)) => Ok(p),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no project {id}"))),
    }
}

#[derive(Deserialize, Serialize, Default, schemars::JsonSchema)]
pub(crate) struct ListOpts {
    #[schemars(with = "Option<schema::Consistency>")]
    pub(crate) consistency: Option<String>,
    /// The `next` cursor of the previous page.
    pub(crate) after: Option<String>,
    #[schemars(with = "Option<schema::Limit>")]
    pub(crate) limit: Option<usize>,
}

impl ListOpts {
    pub(crate) fn limit(&self) -> poem::Result<usize> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=10_000) => Ok(n),
            Some(n) => Err(invalid("limit", format!("{n} is not between 1 and 10000"))),
        }
    }
}

/// One page of the records under `pfx` that `keep` accepts, and the cursor of the next page.
pub(crate) fn page(
    state: &AdminState,
    pfx: &str,
    opts: &ListOpts,
    keep: impl Fn(&Record) -> bool,
) -> poem::Result<(Vec<Record>, Option<String>)> {
    let limit = opts.limit()?;
    let mut after = opts.after.as_ref().map(|a| format!("{pfx}{a}"));
    let mut out = Vec::new();
    loop {
        let batch = state
            .cluster
            .reader
            .scan(pfx, after.as_deref(), 1024)
            .map_err(internal)?;
        let done = batch.len() < 1024;
        after = batch.last().map(|r| r.key().encode());
        for r in batch {
            if keep(&r) {
                if out.len() == limit {
                    let cursor = out
                        .last()
                        .map(|r: &Record| r.key().encode()[pfx.len()..].to_string());
                    return Ok((out, cursor));
                }
                out.push(r);
            }
        }
        if done {
            return Ok((out, None));
        }
    }
}

pub(crate) fn domain(state: &AdminState, host: &Hostname) -> poem::Result<Domain> {
    match get_record(state, &RecordKey::Domain { host: host.clone() })? {
        Some(Record::Domain(d)) => Ok(d),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no domain {host}"))),
    }
}
