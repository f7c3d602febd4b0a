//! Calls to a test node's admin API: with the cluster's owner key, or with any headers (for
//! tests of roles, keys and bad input).

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::cluster::TestCluster;

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// An HTTP answer: status and JSON body (Null when there is none).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestCluster {
    pub(crate) fn url(&self, idx: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[idx].admin_addr)
    }

    /// One authenticated call to node `idx`'s admin API, with an optional JSON body.
    fn send(
        &self,
        method: &str,
        idx: usize,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply> {
        let mut headers = vec![("Authorization", format!("Bearer {}", self.key))];
        if let Some(k) = idempotency_key {
            headers.push(("Idempotency-Key", k.to_string()));
        }
        let bytes = match body {
            Some(v) => {
                headers.push(("Content-Type", "application/json".into()));
                serde_json::to_vec(&v)?
            }
            None => Vec::new(),
        };
        self.call(idx, method, path, &headers, bytes)
    }

    /// Any call to node `idx`'s admin API: the headers given (no key unless among them) and a
    /// raw body. For tests of roles, keys and bad input.
    pub fn call(
        &self,
        idx: usize,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(idx, path));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let (status, text) = run(req.body(body)?)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// POST a raw body (an IP list import, say); the status and the body as text.
    pub fn post_raw(
        &self,
        idx: usize,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(self.url(idx, path))
            .header("Authorization", format!("Bearer {}", self.key))
            .header("Content-Type", content_type);
        run(req.body(body)?)
    }

    /// GET with any answer type; the status and the body as text.
    pub fn get_text(&self, idx: usize, path: &str) -> Result<(u16, String)> {
        let req = ureq::http::Request::builder()
            .method("GET")
            .uri(self.url(idx, path))
            .header("Authorization", format!("Bearer {}", self.key));
        run(req.body(Vec::new())?)
    }

    pub fn get(&self, idx: usize, path: &str) -> Result<Reply> {
        self.send("GET", idx, path, None, None)
    }

    pub fn post(
        &self,
        idx: usize,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Reply> {
        self.send("POST", idx, path, Some(body), idempotency_key)
    }

    pub fn put(&self, idx: usize, path: &str, body: Value) -> Result<Reply> {
        self.send("PUT", idx, path, Some(body), None)
    }

    pub fn patch(&self, idx: usize, path: &str, body: Value) -> Result<Reply> {
        self.send("PATCH", idx, path, Some(body), None)
    }

    pub fn delete(&self, idx: usize, path: &str) -> Result<Reply> {
        self.send("DELETE", idx, path, None, None)
    }
}

/// One request; bulk calls (a million-entry import) get minutes, not seconds.
fn run(req: ureq::http::Request<Vec<u8>>) -> Result<(u16, String)> {
    let long = req.body().len() > 1 << 20 || req.uri().path().ends_with("/export");
    let agent = if long {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into()
    } else {
        agent()
    };
    let mut resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    Ok((status, text))
}
