//! The admin API's routes: one file per resource, each declaring its rows of the operations
//! table (method, path, least role, summary, body and query types) next to its handlers. The
//! rows make both the router and `/openapi.json` ([`crate::openapi`]).
//!
//! Errors have one shape (see [`crate::http`]) and a status that says whether a retry can help
//! (503) or not (4xx). Who may do what: [`crate::authz`].

mod audit;
mod bot;
mod certificates;
mod cluster;
mod config;
mod domains;
mod iprules;
pub use iprules::import_line;
mod keys;
mod probes;
mod projects;
mod settings;

use std::net::IpAddr;
use std::sync::Arc;

use palisade_raft::ids::Cidr;
use poem::{Endpoint, EndpointExt, IntoResponse};

use crate::openapi::Op;
use crate::state::AdminState;

/// Every operation of the API.
fn ops() -> Vec<Op> {
    [
        probes::ops(),
        cluster::ops(),
        projects::ops(),
        bot::ops(),
        audit::ops(),
        domains::ops(),
        certificates::ops(),
        settings::ops(),
        keys::ops(),
        iprules::ops(),
        config::ops(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub fn routes(state: Arc<AdminState>) -> impl Endpoint {
    let route = crate::openapi::router(ops());
    let allowed = state.options.allowed_ips.clone();
    route
        .around(move |ep, req| {
            let allowed = allowed.clone();
            async move {
                // Outside admin.allowed_ips the admin API does not exist: the same bare 404 as
                // a path that matches no route, before authentication or any other work.
                let source = req.remote_addr().as_socket_addr().map(|a| a.ip());
                if !allowed.is_empty() && !source.is_some_and(|ip| admitted(&allowed, ip)) {
                    return Err(poem::error::NotFoundError.into());
                }
                let started = std::time::Instant::now();
                let method = req.method().to_string();
                let resp = ep.call(req).await.map(IntoResponse::into_response);
                let status = match &resp {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => e.status().as_u16(),
                };
                metrics::counter!("palisade_admin_requests_total", "method" => method, "status" => status.to_string()).increment(1);
                metrics::histogram!("palisade_admin_request_seconds")
                    .record(started.elapsed().as_secs_f64());
                resp
            }
        })
        .data(state)
}

fn admitted(allowed: &[Cidr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allowed.iter().any(|c| c.contains(ip))
}
