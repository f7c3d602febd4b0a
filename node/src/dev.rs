//! `palisade dev`: a one-node cluster on this machine with a demo upstream, a demo project and
//! domain `demo.localhost`, and a certificate from a local CA (there is no ACME on localhost).

use std::convert::Infallible;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use palisade_raft::command::{Command, Request as Write};
use palisade_raft::model::{Cert, CertSource, Domain, Project, Record, RecordKey, TlsMode};

use crate::config::Config;
use crate::datadir::DataDir;
use crate::lifecycle::{config_path, create_cluster, NodeArgs};
use crate::serve;

const DEMO_HOST: &str = "demo.localhost";

/// The addresses apply when the data dir is created; later runs use its `palisade.toml`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Data dir, reused across runs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8443")]
    https_addr: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: String,
    #[arg(long, default_value = "127.0.0.1:7001")]
    admin_addr: String,
    #[arg(long, default_value = "127.0.0.1:7000")]
    cluster_addr: String,
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("palisade-dev")
}

pub async fn run(args: DevArgs) -> Result<()> {
    let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let dd = DataDir::new(&dir);
    let fresh = !dd.is_initialised();
    if fresh {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let node_args = NodeArgs {
            data_dir: dir.clone(),
            cluster_addr: args.cluster_addr.clone(),
            admin_addr: Some(args.admin_addr.clone()),
            public_addr: args.https_addr.clone(),
            http_addr: args.http_addr.clone(),
        };
        let (_, key) = create_cluster(&dd, &node_args).await?;
        // Development only: a real cluster shows its first key once and keeps only the hash.
        dd.write_secret("dev-admin.key", &key)?;
    }
    let mut cfg = Config::load(&config_path(&dd))?.apply_env()?.validate()?;
    if std::env::var_os("PALISADE_ACME_DIRECTORY").is_none() {
        // No public CA can reach a development machine; its names get the local CA's certificate.
        cfg.acme = None;
    }
    if cfg.edge.upstream_allowed_networks.is_empty() {
        // The demo upstream, and the app a developer runs next to it, are on loopback.
        cfg.edge.upstream_allowed_networks = vec!["127.0.0.0/8".parse()?, "::1/128".parse()?];
    }
    let upstream = demo_upstream().await?;
    let running = serve::start(&cfg).await?;
    let cluster = running.cluster.clone();
    let leader_wait = async {
        while cluster.local_status().leader.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), leader_wait)
        .await
        .context("the dev node elected no leader")?;

    let now = palisade_raft::now_ms();
    let mut records = vec![Record::Domain(Domain {
        host: DEMO_HOST.parse()?,
        project: "demo".parse()?,
        upstreams: vec![upstream.to_string()],
        tls: TlsMode::Manual,
        redirect_https: true,
        bot_override: None,
    })];
    if cluster
        .reader
        .get(&RecordKey::Project {
            id: "demo".parse()?,
        })?
        .is_none()
    {
        records.insert(
            0,
            Record::Project(Project {
                id: "demo".parse()?,
                name: "Demo".into(),
                headers: Default::default(),
                bot: Default::default(),
                limits: Default::default(),
                created_at: now,
            }),
        );
    }
    let ca_path = dir.join("dev-ca.pem");
    if fresh || !ca_path.exists() {
        let (ca_pem, cert) = local_certificate(&cluster)?;
        dd.write_public("dev-ca.pem", &ca_pem)?;
        records.push(Record::Cert(cert));
    }
    cluster
        .write(Write::new(Command::PutMany { records }))
        .await?;

    let key = std::fs::read_to_string(dir.join("dev-admin.key")).unwrap_or_default();
    let https_port = cfg.https_listen.port();
    println!("Palisade dev is running (data dir {}).", dir.display());
    println!(
        "  site:   https://{DEMO_HOST}:{https_port}/  (certificate from the local CA {})",
        ca_path.display()
    );
    println!(
        "  http:   http://{DEMO_HOST}:{}/  (redirects to HTTPS)",
        cfg.http_listen.port()
    );
    println!("  admin:  http://{}  key {}", cfg.admin_listen, key.trim());
    println!("  upstream (demo): http://{upstream}");
    println!("Try:");
    println!(
        "  curl -si --cacert {} --resolve {DEMO_HOST}:{https_port}:127.0.0.1 https://{DEMO_HOST}:{https_port}/",
        ca_path.display()
    );
    println!("Ctrl-C stops it.");
    running.until_signal().await
}

/// A CA of this dev node and a certificate for the demo host signed by it, sealed for the store.
fn local_certificate(cluster: &palisade_raft::cluster::Cluster) -> Result<(String, Cert)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Palisade dev local CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![DEMO_HOST.to_string()])?;
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let leaf = params.signed_by(&leaf_key, &issuer)?;
    let name: palisade_raft::ids::Name = "dev-demo".parse()?;
    let context = RecordKey::Cert { name: name.clone() }.encode();
    let cert = Cert {
        name,
        hosts: vec![DEMO_HOST.parse()?],
        chain_pem: format!("{}{}", leaf.pem(), ca_cert.pem()),
        key: cluster
            .master_key()
            .seal(leaf_key.serialize_pem().as_bytes(), &context),
        not_before: 1_735_689_600_000,
        not_after: 2_051_222_400_000,
        issuer: "Palisade dev local CA".into(),
        source: CertSource::Local,
        project: None,
    };
    Ok((ca_cert.pem(), cert))
}

/// A tiny origin that shows what it received.
async fn demo_upstream() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let body = format!(
                        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Palisade demo</title></head>\
                         <body><h1>Hello from the demo upstream</h1><p>{} {} from {}</p></body></html>\n",
                        req.method(),
                        req.uri().path(),
                        xff
                    );
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        "content-type",
                        "text/html; charset=utf-8".parse().expect("static"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
