//! The edge's compiled view of the replicated state: hosts, projects and certificates, read on
//! every request through `arc-swap` (no lock), and updated from the store's change events.

use std::sync::{Arc, OnceLock};

use foldhash::HashMap;

use arc_swap::ArcSwap;
use palisade_raft::crypto::MasterKey;
use palisade_raft::ids::Cidr;
use palisade_raft::ids::ProjectId;
use palisade_raft::model::{
    prefix, BotKeyState, Cert, DecisionAction, Domain, Millis, Project, Record, RecordKey,
};
use palisade_raft::store::{Change, ChangeSet, StateReader};
use rustls::sign::CertifiedKey;

use crate::access::AccessRules;
use crate::bot::keyring::{Keyring, SigningKey};
use crate::upstream::UpstreamGroup;

/// A routed host: its domain record and the live upstream group for it.
#[derive(Clone)]
pub struct Route {
    pub domain: Arc<Domain>,
    pub upstreams: Arc<UpstreamGroup>,
}

#[derive(Clone, Default)]
pub struct View {
    /// Last log index reflected in this view.
    pub index: u64,
    exact: HashMap<String, Route>,
    /// Wildcard routes, keyed by the suffix after `*.`.
    wildcard: HashMap<String, Route>,
    pub projects: HashMap<ProjectId, Arc<ProjectView>>,
    certs_exact: HashMap<String, Vec<Served>>,
    certs_wildcard: HashMap<String, Vec<Served>>,
    /// Which hosts each certificate record covers, for deletes.
    cert_hosts: HashMap<String, Vec<String>>,
    /// TLS-ALPN-01 validation certificates by host (RFC 8737), shown only to a client that
    /// offers nothing but `acme-tls/1`.
    alpn01: HashMap<String, Arc<CertifiedKey>>,
    /// `min_tls = "1.3"` in the cluster settings.
    pub tls13_only: bool,
    /// `edge.upstream_allowed_networks` in the cluster settings.
    pub upstream_allowed: Arc<Vec<Cidr>>,
    /// Every IP allow and block list.
    pub access: AccessRules,
    /// The bot-protection keys, opened: the active one signs, all verify.
    pub bot_keys: Keyring,
    /// Bot-protection decisions by project and prefix.
    pub decisions: Arc<HashMap<(ProjectId, Cidr), Running>>,
    /// How many decisions there are of each (is IPv6, prefix length): the lengths to look up.
    decision_lens: std::collections::BTreeMap<(bool, u8), u32>,
}

/// A project as the data plane uses it: the record, and what is built from it once per change
/// instead of once per request (the security header values, the request counters).
pub struct ProjectView {
    pub project: Arc<Project>,
    /// Shared with each response's [`crate::response::Finish`] (a count, not a copy).
    pub headers: Arc<SecurityHeaders>,
    pub counters: StatusCounters,
}

impl ProjectView {
    pub fn new(project: Project) -> ProjectView {
        ProjectView {
            headers: Arc::new(SecurityHeaders::new(&project.headers)),
            counters: StatusCounters::new(project.id.to_string()),
            project: Arc::new(project),
        }
    }
}

/// `palisade_requests_total` for one project, a handle per status code resolved on first use
/// (the registry is not searched by label strings per request).
pub struct StatusCounters {
    project: String,
    by_status: Box<[OnceLock<metrics::Counter>]>,
}

impl StatusCounters {
    pub fn new(project: String) -> StatusCounters {
        StatusCounters {
            project,
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn count(&self, status: hyper::StatusCode) {
        let code = status.as_u16();
        let Some(slot) = self.by_status.get(usize::from(code).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| {
            metrics::counter!("palisade_requests_total", "project" => self.project.clone(), "status" => code.to_string())
        })
        .increment(1);
    }
}

/// The security headers of a project, as header values built when the project changed, and
/// as the lines an HTTP/1.1 response head carries (written as they are, no map involved).
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    pub keep_upstream: bool,
    pub hsts: Option<hyper::header::HeaderValue>,
    pub nosniff: bool,
    pub frame_deny: bool,
    pub xss_protection: bool,
    /// Send the upstream an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// `name: value\r\n` for each header set, without HSTS (plain HTTP) and with it (HTTPS).
    lines: [Box<[u8]>; 2],
}

impl SecurityHeaders {
    pub fn new(p: &palisade_raft::model::HeaderPolicy) -> SecurityHeaders {
        let hsts = (p.hsts_max_age > 0).then(|| {
            let mut v = format!("max-age={}", p.hsts_max_age);
            if p.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if p.hsts_preload {
                v.push_str("; preload");
            }
            hyper::header::HeaderValue::try_from(v).expect("digits and ASCII words")
        });
        let mut h = SecurityHeaders {
            keep_upstream: p.keep_upstream,
            hsts,
            nosniff: p.nosniff,
            frame_deny: p.frame_deny,
            xss_protection: p.xss_protection,
            forwarded: p.forwarded,
            lines: Default::default(),
        };
        h.lines = [false, true].map(|https| {
            let mut map = hyper::HeaderMap::new();
            crate::response::apply_security_headers(&mut map, &h, https);
            let mut out = Vec::new();
            for (name, value) in &map {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.into_boxed_slice()
        });
        h
    }

    /// For requests that reach no project: the defaults.
    pub fn defaults() -> &'static Arc<SecurityHeaders> {
        static DEFAULTS: OnceLock<Arc<SecurityHeaders>> = OnceLock::new();
        DEFAULTS.get_or_init(|| Arc::new(SecurityHeaders::new(&Default::default())))
    }

    /// The header lines a response over `https` (or not) carries, as written in an HTTP/1.1
    /// head: the same fields [`crate::response::apply_security_headers`] sets.
    pub fn lines(&self, https: bool) -> &[u8] {
        &self.lines[usize::from(https)]
    }
}

/// A bot-protection decision in force: until when, what, and since when (a clearance issued
/// before `since` does not pass it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub until: Millis,
    pub action: DecisionAction,
    pub since: Millis,
}

/// A certificate as served for one name: the newest usable one wins.
#[derive(Clone)]
struct Served {
    name: String,
    /// Served for this project's domains only (see [`Cert::project`]).
    project: Option<ProjectId>,
    key: Arc<CertifiedKey>,
}

/// A keyring key id (16 hex digits) as the bytes tokens and cookies carry.
fn kid_bytes(kid: &palisade_raft::ids::Name) -> Option<crate::bot::keyring::Kid> {
    hex::decode(kid.as_str()).ok()?.try_into().ok()
}

/// Exact match first, then the wildcard one label up (`*.example.com` covers `a.example.com`
/// but not `a.b.example.com` nor `example.com`).
fn lookup<'a, T>(
    exact: &'a HashMap<String, T>,
    wildcard: &'a HashMap<String, T>,
    host: &str,
) -> Option<&'a T> {
    exact.get(host).or_else(|| {
        host.split_once('.')
            .and_then(|(_, parent)| wildcard.get(parent))
    })
}

impl View {
    pub fn route(&self, host: &str) -> Option<&Route> {
        lookup(&self.exact, &self.wildcard, host)
    }

    /// The certificate for `host`: the newest for the exact name, else for the wildcard one
    /// label up, among those that may be served for the project the host routes to (a
    /// project's own first, then the cluster's). A host that routes nowhere gets only the
    /// cluster's.
    pub fn cert(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let project = self.route(host).map(|r| &r.domain.project);
        let pick = |served: &Vec<Served>| {
            let newest = |want: Option<&ProjectId>| {
                served
                    .iter()
                    .rev()
                    .find(|s| s.project.as_ref() == want)
                    .map(|s| s.key.clone())
            };
            project
                .and_then(|p| newest(Some(p)))
                .or_else(|| newest(None))
        };
        let exact = self.certs_exact.get(host).and_then(pick);
        exact.or_else(|| {
            let (_, parent) = host.split_once('.')?;
            self.certs_wildcard.get(parent).and_then(pick)
        })
    }

    pub fn alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn01.get(host).cloned()
    }

    pub fn project(&self, id: &ProjectId) -> Option<&Arc<Project>> {
        self.projects.get(id).map(|p| &p.project)
    }

    /// The project with what the data plane built from it.
    pub fn project_view(&self, id: &ProjectId) -> Option<&ProjectView> {
        self.projects.get(id).map(|p| &**p)
    }

    /// The running decision for `ip` in `project`, if any: by address, or by any prefix
    /// covering it. A block outranks a challenge and, among equals, the longest lasting wins;
    /// `since` is the latest of all that cover the address.
    pub fn decision(
        &self,
        project: &ProjectId,
        ip: std::net::IpAddr,
        now: Millis,
    ) -> Option<Running> {
        if self.decisions.is_empty() {
            return None;
        }
        let ip = ip.to_canonical();
        let running = self
            .decision_lens
            .keys()
            .filter(|(v6, _)| *v6 == ip.is_ipv6())
            .filter_map(|&(_, len)| ipnet::IpNet::new(ip, len).ok())
            .filter_map(|net| {
                let key = (project.clone(), Cidr::from_net(net));
                self.decisions.get(&key).copied()
            })
            .filter(|r| r.until > now);
        running.fold(None, |best: Option<Running>, r| {
            let since = best.map_or(r.since, |b| b.since.max(r.since));
            let rank = |r: &Running| (r.action == DecisionAction::Block, r.until);
            let top = match best {
                Some(b) if rank(&b) >= rank(&r) => b,
                _ => r,
            };
            Some(Running { since, ..top })
        })
    }

    fn count_decision_len(&mut self, prefix: &Cidr, delta: i32) {
        let net = prefix.net();
        let key = (matches!(net, ipnet::IpNet::V6(_)), net.prefix_len());
        let n = self.decision_lens.entry(key).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.decision_lens.remove(&key);
        }
    }

    fn put_bot_key(&mut self, k: &palisade_raft::model::BotKey, master: &MasterKey) {
        let context = RecordKey::BotKey { kid: k.kid.clone() }.encode();
        match (kid_bytes(&k.kid), master.open(&k.secret, &context)) {
            (Some(kid), Ok(secret)) => self.bot_keys.insert(SigningKey::new(
                kid,
                &secret,
                k.state == BotKeyState::Active,
            )),
            _ => tracing::error!(kid = %k.kid, "bot-protection key not usable; ignored"),
        }
    }

    fn put_domain(&mut self, d: Domain, previous: Option<&Route>) {
        let upstreams = match previous {
            Some(r) if r.domain.upstreams == d.upstreams => r.upstreams.clone(),
            _ => UpstreamGroup::new(&d.upstreams),
        };
        let route = Route {
            domain: Arc::new(d.clone()),
            upstreams,
        };
        match d.host.as_str().strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), route),
            None => self.exact.insert(d.host.to_string(), route),
        };
    }

    fn delete_domain(&mut self, host: &str) {
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.remove(suffix),
            None => self.exact.remove(host),
        };
    }

    fn put_cert(&mut self, c: &Cert, master: &MasterKey) {
        self.delete_cert(c.name.as_str());
        let key = match crate::tls::certified_key(c, master) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::error!(cert = %c.name, error = %e, "certificate not usable; not served");
                return;
            }
        };
        let served = Served {
            name: c.name.to_string(),
            project: c.project.clone(),
            key,
        };
        let mut hosts = Vec::new();
        for h in &c.hosts {
            let (map, name) = match h.as_str().strip_prefix("*.") {
                Some(suffix) => (&mut self.certs_wildcard, suffix),
                None => (&mut self.certs_exact, h.as_str()),
            };
            map.entry(name.to_string())
                .or_default()
                .push(served.clone());
            hosts.push(h.to_string());
        }
        self.cert_hosts.insert(c.name.to_string(), hosts);
    }

    fn delete_cert(&mut self, name: &str) {
        for h in self.cert_hosts.remove(name).unwrap_or_default() {
            let (map, key) = match h.strip_prefix("*.") {
                Some(suffix) => (&mut self.certs_wildcard, suffix.to_string()),
                None => (&mut self.certs_exact, h),
            };
            if let Some(served) = map.get_mut(&key) {
                served.retain(|s| s.name != name);
                if served.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }

    fn apply(&mut self, change: &Change, master: &MasterKey) {
        match change {
            Change::Put(Record::Domain(d)) => {
                let previous = self
                    .route(d.host.as_str())
                    .filter(|r| r.domain.host == d.host)
                    .cloned();
                self.put_domain(d.clone(), previous.as_ref());
            }
            Change::Delete(RecordKey::Domain { host }) => self.delete_domain(host.as_str()),
            Change::Put(Record::Project(p)) => {
                self.projects
                    .insert(p.id.clone(), Arc::new(ProjectView::new(p.clone())));
            }
            Change::Delete(RecordKey::Project { id }) => {
                self.projects.remove(id);
            }
            Change::Put(Record::Cert(c)) => self.put_cert(c, master),
            Change::Delete(RecordKey::Cert { name }) => self.delete_cert(name.as_str()),
            Change::Put(Record::Alpn01(a)) => {
                let context = RecordKey::Alpn01 {
                    host: a.host.clone(),
                }
                .encode();
                match crate::tls::certified_key_from(&a.cert_pem, &a.key, &context, master) {
                    Ok(k) => {
                        self.alpn01.insert(a.host.to_string(), Arc::new(k));
                    }
                    Err(e) => {
                        tracing::error!(host = %a.host, error = %e, "TLS-ALPN-01 certificate not usable")
                    }
                }
            }
            Change::Delete(RecordKey::Alpn01 { host }) => {
                self.alpn01.remove(host.as_str());
            }
            Change::Put(Record::Settings(s)) => {
                self.tls13_only = s.tls13_only();
                self.upstream_allowed = Arc::new(s.upstream_allowed_networks());
            }
            Change::Delete(RecordKey::Settings) => {
                self.tls13_only = false;
                self.upstream_allowed = Arc::default();
            }
            Change::Put(Record::BotKey(k)) => self.put_bot_key(k, master),
            Change::Delete(RecordKey::BotKey { kid }) => {
                if let Some(kid) = kid_bytes(kid) {
                    self.bot_keys.remove(&kid);
                }
            }
            Change::Put(Record::Decision(d)) => {
                let old = Arc::make_mut(&mut self.decisions).insert(
                    (d.project.clone(), d.prefix),
                    Running {
                        until: d.until,
                        action: d.action,
                        since: d.since,
                    },
                );
                if old.is_none() {
                    self.count_decision_len(&d.prefix, 1);
                }
            }
            Change::Delete(RecordKey::Decision { project, prefix })
                if Arc::make_mut(&mut self.decisions)
                    .remove(&(project.clone(), *prefix))
                    .is_some() =>
            {
                self.count_decision_len(prefix, -1);
            }
            Change::Put(Record::IpRule(r)) => self.access.put(r),
            Change::Delete(RecordKey::IpRule {
                project,
                list,
                cidr,
            }) => self.access.delete(project.as_ref(), *list, *cidr),
            _ => {}
        }
    }

    /// Build the whole view from the applied state (start-up, snapshot install, lagging).
    pub fn load(
        reader: &StateReader,
        master: &MasterKey,
        old: Option<&View>,
    ) -> std::io::Result<View> {
        let index = reader.applied_index();
        let mut v = View {
            index,
            ..View::default()
        };
        for r in reader.scan(prefix::PROJECT, None, usize::MAX)? {
            v.apply(&Change::Put(r), master);
        }
        for r in reader.scan(prefix::DOMAIN, None, usize::MAX)? {
            if let Record::Domain(d) = r {
                let previous = old
                    .and_then(|o| o.route(d.host.as_str()))
                    .filter(|r| r.domain.host == d.host)
                    .cloned();
                v.put_domain(d, previous.as_ref());
            }
        }
        for p in [
            prefix::CERT,
            prefix::ALPN01,
            prefix::BOTKEY,
            prefix::DECISION,
        ] {
            for r in reader.scan(p, None, usize::MAX)? {
                v.apply(&Change::Put(r), master);
            }
        }
        reader.for_each(prefix::IPRULE, |r| {
            if let Record::IpRule(r) = r {
                v.access.put(&r)
            }
        })?;
        if let Some(s) = reader.get(&RecordKey::Settings)? {
            v.apply(&Change::Put(s), master);
        }
        Ok(v)
    }

    /// Every upstream group in the view (for health checking).
    pub fn upstream_groups(&self) -> Vec<Arc<UpstreamGroup>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .map(|r| r.upstreams.clone())
            .collect()
    }
}

/// The shared, hot-swappable view and the task that keeps it current.
pub struct LiveView {
    pub current: ArcSwap<View>,
    /// The last log index whose changes the view has taken in (relevant to it or not).
    seen: tokio::sync::watch::Sender<u64>,
}

impl LiveView {
    pub fn get(&self) -> arc_swap::Guard<Arc<View>> {
        self.current.load()
    }

    /// The last log index the view reflects, as it moves (read-your-writes for questions about
    /// what this node's edge does, such as the IP rule check).
    pub fn seen(&self) -> tokio::sync::watch::Receiver<u64> {
        self.seen.subscribe()
    }

    /// Load the view and follow the store's change events until the store stops.
    pub fn start(reader: StateReader, master: MasterKey) -> std::io::Result<Arc<LiveView>> {
        let mut events = reader.subscribe();
        let view = View::load(&reader, &master, None)?;
        let live = Arc::new(LiveView {
            seen: tokio::sync::watch::Sender::new(view.index),
            current: ArcSwap::from_pointee(view),
        });
        let this = live.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(set) => this.apply(&set, &reader, &master),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "edge view fell behind the store; reloading");
                        this.reload(&reader, &master);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(live)
    }

    fn reload(&self, reader: &StateReader, master: &MasterKey) {
        let old = self.current.load_full();
        match View::load(reader, master, Some(&old)) {
            Ok(v) => {
                let index = v.index;
                self.current.store(Arc::new(v));
                self.seen.send_modify(|i| *i = (*i).max(index));
            }
            Err(e) => {
                tracing::error!(error = %e, "reloading the edge view failed; keeping the previous one")
            }
        }
    }

    fn apply(&self, set: &ChangeSet, reader: &StateReader, master: &MasterKey) {
        if set.changes.iter().any(|c| matches!(c, Change::Reset)) {
            return self.reload(reader, master);
        }
        let relevant = |c: &Change| {
            matches!(
                c,
                Change::Put(
                    Record::Domain(_)
                        | Record::Project(_)
                        | Record::Cert(_)
                        | Record::Alpn01(_)
                        | Record::Settings(_)
                        | Record::IpRule(_)
                        | Record::BotKey(_)
                        | Record::Decision(_)
                ) | Change::Delete(
                    RecordKey::Domain { .. }
                        | RecordKey::Project { .. }
                        | RecordKey::Cert { .. }
                        | RecordKey::Alpn01 { .. }
                        | RecordKey::Settings
                        | RecordKey::IpRule { .. }
                        | RecordKey::BotKey { .. }
                        | RecordKey::Decision { .. }
                )
            )
        };
        if set.changes.iter().any(relevant) {
            let mut next = View::clone(&self.current.load());
            for c in &set.changes {
                next.apply(c, master);
            }
            next.index = set.index;
            self.current.store(Arc::new(next));
        }
        self.seen.send_replace(set.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_of_any_prefix_length_covers_its_addresses_and_a_block_outranks_a_challenge() {
        let master = MasterKey::generate();
        let mut v = View::default();
        let shop: ProjectId = "shop".parse().unwrap();
        let decide = |prefix: &str, action, until| {
            Change::Put(Record::Decision(palisade_raft::model::Decision {
                project: "shop".parse().unwrap(),
                prefix: prefix.parse().unwrap(),
                action,
                until,
                reason: String::new(),
                since: until / 10,
            }))
        };
        v.apply(
            &decide("203.0.113.0/24", DecisionAction::Challenge, 100),
            &master,
        );
        v.apply(
            &decide("2001:db8::/48", DecisionAction::Challenge, 100),
            &master,
        );
        v.apply(
            &decide("203.0.113.9/32", DecisionAction::Block, 50),
            &master,
        );
        let at = |ip: &str, now| {
            v.decision(&shop, ip.parse().unwrap(), now)
                .map(|r| (r.until, r.action))
        };
        // The latest `since` of every decision covering the address.
        let since = v.decision(&shop, "203.0.113.9".parse().unwrap(), 0);
        assert_eq!(since.map(|r| r.since), Some(10));
        assert_eq!(at("203.0.113.7", 0), Some((100, DecisionAction::Challenge)));
        assert_eq!(at("203.0.113.9", 0), Some((50, DecisionAction::Block)));
        assert_eq!(
            at("203.0.113.9", 60),
            Some((100, DecisionAction::Challenge))
        );
        assert_eq!(
            at("::ffff:203.0.113.7", 0),
            Some((100, DecisionAction::Challenge))
        );
        assert_eq!(
            at("2001:db8:0:ffff::1", 0),
            Some((100, DecisionAction::Challenge))
        );
        assert_eq!(at("2001:db8:1::1", 0), None);
        assert_eq!(at("203.0.114.1", 0), None);
        assert_eq!(at("203.0.113.7", 100), None, "ended");
        assert_eq!(
            v.decision(&"blog".parse().unwrap(), "203.0.113.7".parse().unwrap(), 0),
            None
        );
        v.apply(
            &Change::Delete(RecordKey::Decision {
                project: shop.clone(),
                prefix: "203.0.113.0/24".parse().unwrap(),
            }),
            &master,
        );
        assert_eq!(v.decision(&shop, "203.0.113.7".parse().unwrap(), 0), None);
        assert_eq!(v.decision_lens.len(), 2, "{:?}", v.decision_lens);
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label_and_exact_names_win() {
        let exact: HashMap<_, _> = [("api.example.com".to_string(), "exact")]
            .into_iter()
            .collect();
        let wildcard: HashMap<_, _> = [("example.com".to_string(), "wild")].into_iter().collect();
        assert_eq!(lookup(&exact, &wildcard, "api.example.com"), Some(&"exact"));
        assert_eq!(lookup(&exact, &wildcard, "www.example.com"), Some(&"wild"));
        assert_eq!(lookup(&exact, &wildcard, "a.b.example.com"), None);
        assert_eq!(lookup(&exact, &wildcard, "example.com"), None);
        assert_eq!(lookup(&exact, &wildcard, "other.test"), None);
    }
}
