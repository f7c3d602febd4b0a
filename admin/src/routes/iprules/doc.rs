//! What each IP-list operation takes, as the document states it. The handlers share one query
//! type ([`super::RuleQuery`]); the document gives every operation exactly the parameters it
//! reads, and on the cluster-wide list (a block list only) `list` may only be `block`.

use palisade_raft::model::schema::{CidrText, Consistency, IpText, Limit, ListName};
use palisade_raft::schema_type;

schema_type!(
    BlockOnly,
    serde_json::json!({ "type": "string", "enum": ["block"],
        "description": "The cluster-wide list is a block list." })
);
schema_type!(
    ExportFormat,
    serde_json::json!({ "type": "string", "enum": ["csv", "json"] })
);

/// What the operations of one scope (a project's lists, or the cluster-wide one) take.
pub(crate) trait ScopeDoc {
    type List: schemars::JsonSchema;
    type Rule: schemars::JsonSchema;
    type Remove: schemars::JsonSchema;
    type Import: schemars::JsonSchema;
    type Export: schemars::JsonSchema;
}

/// A project's lists.
pub(crate) struct Project;
/// The cluster-wide block list.
pub(crate) struct Cluster;

/// Defines the query and body types of one scope's operations, with `$list` the schema of
/// `list` where the operation needs one and `$some` where it may be left out.
macro_rules! scope_queries {
    ($scope:ident, $list:literal, $some:literal, $listing:ident, $remove:ident, $import:ident, $export:ident, $body:ident) => {
        impl ScopeDoc for $scope {
            type List = $listing;
            type Rule = $body;
            type Remove = $remove;
            type Import = $import;
            type Export = $export;
        }

        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub(crate) struct $listing {
            /// Only this list (default: every list of the scope).
            #[schemars(with = $some)]
            list: Option<String>,
            #[schemars(with = "Option<Consistency>")]
            consistency: Option<String>,
            /// The `next` cursor of the previous page.
            after: Option<String>,
            #[schemars(with = "Option<Limit>")]
            limit: Option<usize>,
        }

        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub(crate) struct $remove {
            #[schemars(with = $list)]
            list: String,
            /// The entry to remove (or `all=true`).
            #[schemars(with = "Option<CidrText>")]
            cidr: Option<String>,
            /// Empty the list (instead of `cidr`).
            all: Option<bool>,
        }

        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub(crate) struct $import {
            #[schemars(with = $list)]
            list: String,
            /// Apply the good lines and report the bad ones (default: all or nothing).
            partial: Option<bool>,
        }

        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        pub(crate) struct $export {
            #[schemars(with = $list)]
            list: String,
            /// `csv` (default) or `json`.
            #[schemars(with = "Option<ExportFormat>")]
            format: Option<String>,
            #[schemars(with = "Option<Consistency>")]
            consistency: Option<String>,
        }

        #[derive(schemars::JsonSchema)]
        #[schemars(deny_unknown_fields)]
        #[allow(dead_code)]
        pub(crate) struct $body {
            #[schemars(with = $list)]
            list: String,
            #[schemars(with = "CidrText")]
            cidr: String,
            #[serde(default)]
            #[schemars(schema_with = "palisade_raft::model::schema::text::<256>")]
            note: String,
            /// Unix ms, in the future (or `ttl_seconds`, not both).
            expires_at: Option<u64>,
            /// 1 to 315,360,000 (ten years).
            #[schemars(range(min = 1, max = 315_360_000))]
            ttl_seconds: Option<u64>,
        }
    };
}

scope_queries!(
    Project,
    "ListName",
    "Option<ListName>",
    ProjectList,
    ProjectRemove,
    ProjectImport,
    ProjectExport,
    ProjectRule
);
scope_queries!(
    Cluster,
    "Option<BlockOnly>",
    "Option<BlockOnly>",
    ClusterList,
    ClusterRemove,
    ClusterImport,
    ClusterExport,
    ClusterRule
);

/// `GET …/ip-rules/check`.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub(crate) struct CheckQuery {
    #[schemars(with = "IpText")]
    ip: String,
    #[schemars(with = "Option<Consistency>")]
    consistency: Option<String>,
}
