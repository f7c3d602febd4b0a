//! One table of operations makes both the router and the OpenAPI document, so the document
//! cannot name a route that does not exist or miss one that does.
//!
//! Each [`Op`] carries its method, path, the least role it needs, a summary, the schema of its
//! body and query (derived from the same Rust types the handler parses, with `schemars`), and the
//! endpoint. `GET /openapi.json` serves the document (OpenAPI 3.0.3); `GET /docs` is a page that
//! reads it and lets an operator try each call with their key.

use std::collections::BTreeMap;
use std::sync::Arc;

use palisade_raft::model::{schema, Role};
use poem::endpoint::BoxEndpoint;
use poem::http::Method;
use poem::{Endpoint, EndpointExt, FromRequest, IntoEndpoint, IntoResponse, Route, RouteMethod};
use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The least role of an operation, as its row says it.
pub(crate) const PUBLIC: Option<Role> = None;
pub(crate) const VIEWER: Option<Role> = Some(Role::Viewer);
pub(crate) const OPERATOR: Option<Role> = Some(Role::Operator);
pub(crate) const ADMIN: Option<Role> = Some(Role::Admin);
pub(crate) const OWNER: Option<Role> = Some(Role::Owner);

/// What a route takes in its body.
enum Body {
    None,
    /// A JSON body of this schema; `false`: the body may be left out (its fields default).
    Json(SchemaFn, bool),
    /// Raw bytes of these media types (bulk imports).
    Raw(&'static [&'static str]),
}

pub(crate) struct Op {
    method: Method,
    /// Poem syntax: `/v1/projects/:id`.
    path: &'static str,
    /// `None`: no key needed.
    role: Option<Role>,
    summary: &'static str,
    body: Body,
    query: Option<SchemaFn>,
    ep: BoxEndpoint<'static>,
}

pub(crate) fn op<E>(
    method: Method,
    path: &'static str,
    role: Option<Role>,
    summary: &'static str,
    ep: E,
) -> Op
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    Op {
        method,
        path,
        role,
        summary,
        body: Body::None,
        query: None,
        ep: ep.into_endpoint().map_to_response().boxed(),
    }
}

impl Op {
    /// The route reads a JSON body of type `T`.
    pub(crate) fn json<T: JsonSchema>(mut self) -> Self {
        self.body = Body::Json(|g| g.subschema_for::<T>(), true);
        self
    }

    /// The route reads a JSON body of type `T` when one is sent, and its defaults otherwise.
    pub(crate) fn optional_json<T: JsonSchema>(mut self) -> Self {
        self.body = Body::Json(|g| g.subschema_for::<T>(), false);
        self
    }

    /// The route reads a raw body of one of these media types.
    pub(crate) fn raw(mut self, types: &'static [&'static str]) -> Self {
        self.body = Body::Raw(types);
        self
    }

    /// The route reads query parameters into `T`.
    pub(crate) fn query<T: JsonSchema>(mut self) -> Self {
        self.query = Some(|g| g.root_schema_for::<T>().schema.into());
        self
    }
}

/// OpenAPI's `{id}` for poem's `:id`.
fn openapi_path(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What a path segment takes, by its name and route (the handlers parse them so).
fn path_schema(path: &str, name: &str) -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let s = match (name, path) {
        ("host", _) => g.subschema_for::<schema::HostText>(),
        ("id", p) if p.starts_with("/v1/projects/") => g.subschema_for::<schema::ProjectIdText>(),
        ("id", p) if p.starts_with("/v1/cluster/members/") => {
            return json!({ "type": "integer", "format": "int64", "minimum": 1, "maximum": i64::MAX });
        }
        _ => g.subschema_for::<schema::NameText>(),
    };
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// The schema of `op`'s query type (`Null` when it takes none): an object of its parameters.
fn query_schema(op: &Op, g: &mut SchemaGenerator) -> Value {
    op.query
        .map(|query| serde_json::to_value(query(g)).unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

/// The query parameters `op` reads: those its query type declares, and `wait` on a change.
fn query_names(op: &Op) -> Arc<[String]> {
    let mut g = SchemaSettings::openapi3().into_generator();
    let schema = query_schema(op, &mut g);
    let declared = schema["properties"].as_object().into_iter().flatten();
    let wait = (!op.method.is_safe()).then(|| "wait".to_string());
    declared.map(|(name, _)| name.clone()).chain(wait).collect()
}

/// Refuses, before the handler, what the document says the operation does not take: a query
/// parameter it does not declare (a typo would otherwise be ignored) and an `Idempotency-Key`
/// that is not 1 to 128 printable characters, naming the parameter or header.
fn checked_input(ep: BoxEndpoint<'static>, names: Arc<[String]>) -> BoxEndpoint<'static> {
    ep.around(move |ep, req| {
        let names = names.clone();
        async move {
            let query = req.uri().query().unwrap_or("");
            for (name, _) in form_urlencoded::parse(query.as_bytes()) {
                if !names.iter().any(|n| *n == name) {
                    let known = match names.is_empty() {
                        true => "it takes none".to_string(),
                        false => format!("it takes {}", names.join(", ")),
                    };
                    return Err(crate::http::invalid(
                        &name,
                        format!("is not a query parameter of this operation ({known})"),
                    ));
                }
            }
            if !req.method().is_safe() {
                crate::write::check_idempotency_key(req.headers())?;
            }
            ep.call(req).await
        }
    })
    .boxed()
}

fn parameters(op: &Op, g: &mut SchemaGenerator) -> Vec<Value> {
    let mut out: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix(':'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_schema(op.path, name) }))
        .collect();
    let schema = query_schema(op, g);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, s) in schema["properties"].as_object().into_iter().flatten() {
        let mut s = s.clone();
        let description = s.as_object_mut().and_then(|o| o.remove("description"));
        let mut p = json!({
            "name": name, "in": "query", "required": required.contains(&name.as_str()),
            "schema": s,
        });
        if let Some(d) = description {
            p["description"] = d;
        }
        out.push(p);
    }
    if !op.method.is_safe() {
        out.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A retry with the same key (from the same API key, within 24 hours) is applied once and answers as the first did; the key on a different request gets 422.",
            "schema": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]{1,128}$" },
        }));
        out.push(json!({
            "name": "wait", "in": "query", "required": false,
            "description": "`all`: answer once every voter has applied the write.",
            "schema": { "type": "string", "enum": ["all", "leader"] },
        }));
    }
    out
}

fn operation(op: &Op, g: &mut SchemaGenerator) -> Value {
    let mut o = json!({
        "summary": op.summary,
        "operationId": format!("{}_{}", op.method.as_str().to_lowercase(), op.path.trim_start_matches('/').replace(['/', ':', '-'], "_")),
        "tags": [op.path.split('/').nth(if op.path.starts_with("/v1/") { 2 } else { 1 }).unwrap_or("")],
        "parameters": parameters(op, g),
        "responses": {
            "2XX": { "description": "Done." },
            "default": {
                "description": "An error: `field` names the input at fault.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            },
        },
    });
    match &op.role {
        Some(role) => {
            o["security"] = json!([{ "bearer": [] }]);
            o["x-palisade-role"] = json!(role.as_str());
            o["description"] = json!(format!(
                "Needs a key with role `{}` or above.",
                role.as_str()
            ));
        }
        None => o["security"] = json!([]),
    }
    match &op.body {
        Body::None => {}
        Body::Json(schema, required) => {
            let s = serde_json::to_value(schema(g)).unwrap_or(Value::Null);
            o["requestBody"] =
                json!({ "required": required, "content": { "application/json": { "schema": s } } });
        }
        Body::Raw(types) => {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| {
                    (
                        t.to_string(),
                        json!({ "schema": { "type": "string", "minLength": 1 } }),
                    )
                })
                .collect();
            o["requestBody"] = json!({ "required": true, "content": content });
        }
    }
    o
}

/// States the largest value of every unsigned integer the handlers parse into a Rust type
/// (`format: uint32` says it, but is not a bound JSON Schema checks).
fn bound_integers(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let max = match o.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(u64::from(u8::MAX)),
                Some("uint16") => Some(u64::from(u16::MAX)),
                Some("uint32") => Some(u64::from(u32::MAX)),
                Some("uint64" | "uint") => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max {
                o.entry("maximum").or_insert(json!(max));
                o.entry("minimum").or_insert(json!(0));
            }
            o.values_mut().for_each(bound_integers);
        }
        Value::Array(a) => a.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// The document for `ops`.
fn document(ops: &[Op]) -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for op in ops {
        let o = operation(op, &mut g);
        paths
            .entry(openapi_path(op.path))
            .or_default()
            .insert(op.method.as_str().to_lowercase(), o);
    }
    let mut schemas: Map<String, Value> = g
        .take_definitions()
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["code", "message", "error"],
            "properties": {
                "code": { "type": "string", "description": "Stable: invalid, unauthenticated, forbidden, not_found, conflict, too_large, unavailable, …" },
                "field": { "type": "string", "nullable": true, "description": "The input at fault: a body path, query parameter, header or path segment." },
                "message": { "type": "string" },
                "error": { "type": "string", "description": "`field: message`, for people." },
            },
        }),
    );
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Palisade admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of a Palisade cluster, served by every node on its private admin address. Writes go to the leader from any node; reads are linearizable unless `consistency=local`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "An API key: `pal_{id}_{secret}`." } },
        },
    });
    bound_integers(&mut doc);
    doc
}

/// The router for `ops`, plus `/openapi.json` and `/docs`.
pub(crate) fn router(ops: Vec<Op>) -> Route {
    let doc = document(&ops).to_string();
    let mut by_path: Vec<(&'static str, RouteMethod, Vec<Method>)> = Vec::new();
    for mut op in ops {
        if let Some(role) = op.role {
            op.ep = authenticated(op.ep, role);
        }
        let names = query_names(&op);
        op.ep = checked_input(op.ep, names);
        let method = op.method.clone();
        match by_path.iter_mut().find(|(p, _, _)| *p == op.path) {
            Some((_, rm, methods)) => {
                *rm = std::mem::take(rm).method(op.method, op.ep);
                methods.push(method);
            }
            None => by_path.push((
                op.path,
                RouteMethod::new().method(op.method, op.ep),
                vec![method],
            )),
        }
    }
    let mut route = Route::new();
    for (path, rm, methods) in by_path {
        route = route.at(path, with_allow(rm, &methods));
    }
    route
        .at(
            "/openapi.json",
            poem::get(poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(doc.clone())
            })),
        )
        .at(
            "/docs",
            poem::get(poem::endpoint::make_sync(|_| {
                poem::web::Html(DOCS_PAGE).into_response()
            })),
        )
}

/// A path's 405 names the methods it takes (`Allow`, RFC 9110 §15.5.6); HEAD goes with GET.
fn with_allow(rm: RouteMethod, methods: &[Method]) -> BoxEndpoint<'static> {
    let mut names: Vec<&str> = methods.iter().map(Method::as_str).collect();
    if methods.contains(&Method::GET) {
        names.push("HEAD");
    }
    let allow = names.join(", ");
    rm.around(move |ep, req| {
        let allow = allow.clone();
        async move {
            let mut resp = ep.get_response(req).await;
            if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
                if let Ok(v) = allow.parse() {
                    resp.headers_mut().insert(poem::http::header::ALLOW, v);
                }
            }
            Ok(resp)
        }
    })
    .boxed()
}

/// Check the key (and its role) before the endpoint reads anything, so a caller without one
/// learns nothing about the route's input and costs no body parsing. The handler checks the
/// key's scope against what it touches.
fn authenticated(ep: BoxEndpoint<'static>, role: Role) -> BoxEndpoint<'static> {
    ep.around(move |ep, mut req| async move {
        let state = req
            .data::<std::sync::Arc<crate::state::AdminState>>()
            .cloned()
            .ok_or_else(|| crate::write::internal("admin state missing"))?;
        let caller = crate::http::Caller::from_request_without_body(&req).await?;
        let principal =
            crate::authz::authorize(&state, &caller, role, crate::authz::Within::Listing).await?;
        // A change is checked against state at least as new as any write acknowledged anywhere
        // (a domain for a project created through another node a moment ago); only callers
        // with a key make the leader do that.
        if !req.method().is_safe() {
            state
                .cluster
                .linearizable_barrier()
                .await
                .map_err(crate::write::cluster_error)?;
        }
        // The handler's own check reuses it instead of hashing the key again.
        req.extensions_mut().insert(principal);
        if !req.method().is_safe() {
            let fingerprint = crate::http::Fingerprint::of_head(&req);
            req.extensions_mut().insert(fingerprint);
        }
        ep.call(req).await
    })
    .boxed()
}

/// A self-contained page (no outside scripts: the admin network may have no internet) that lists
/// the operations of `/openapi.json` and sends any of them with the key typed in.
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Palisade admin API</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}
details{border:1px solid #ccc;border-radius:4px;margin:.3em 0;padding:.3em .6em}
summary{cursor:pointer}code{background:#f4f4f4;padding:0 .2em}
.m{display:inline-block;width:4.5em;font-weight:bold}.role{color:#666;font-size:90%}
textarea,input{font:13px monospace;width:100%;box-sizing:border-box}pre{background:#f4f4f4;padding:.5em;overflow:auto}
</style></head><body>
<h1>Palisade admin API</h1>
<p>API key: <input id="key" type="password" placeholder="pal_…" autocomplete="off"></p>
<div id="ops">Loading /openapi.json…</div>
<script>
const el=(t,a={},...k)=>{const e=document.createElement(t);Object.assign(e,a);k.forEach(c=>e.append(c));return e};
fetch('/openapi.json').then(r=>r.json()).then(doc=>{
  const root=document.getElementById('ops');root.textContent='';
  for(const [path,methods] of Object.entries(doc.paths)){
    for(const [method,op] of Object.entries(methods)){
      const url=el('input',{value:path});
      const body=el('textarea',{rows:4,placeholder:op.requestBody?'request body':'(no body)'});
      const out=el('pre');
      const send=el('button',{textContent:'Send',onclick:async()=>{
        const h={};const k=document.getElementById('key').value;if(k)h['Authorization']='Bearer '+k;
        if(body.value)h['Content-Type']='application/json';
        const r=await fetch(url.value,{method:method.toUpperCase(),headers:h,body:body.value||undefined});
        const t=await r.text();let shown=t;try{shown=JSON.stringify(JSON.parse(t),null,2)}catch(e){}
        out.textContent=r.status+' '+r.statusText+'\n'+shown;}});
      const params=(op.parameters||[]).map(p=>p.name+' ('+p.in+')').join(', ');
      root.append(el('details',{},
        el('summary',{},el('span',{className:'m',textContent:method.toUpperCase()}),el('code',{textContent:path}),' ',op.summary||'',
          el('span',{className:'role',textContent:op['x-palisade-role']?'  · '+op['x-palisade-role']:'  · no key'})),
        el('p',{textContent:params?'Parameters: '+params:'No parameters.'}),
        el('p',{},'URL (fill in path and query): ',url),body,send,out));
    }
  }
});
</script></body></html>"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_openapi_templates() {
        assert_eq!(
            openapi_path("/v1/projects/:id/ip-rules"),
            "/v1/projects/{id}/ip-rules"
        );
        assert_eq!(openapi_path("/healthz"), "/healthz");
    }
}
