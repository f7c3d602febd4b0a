use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, StorageError};
use tempfile::TempDir;

use super::*;
use crate::command::{Command, Request, Response};
use crate::model::{Project, Record, RecordKey};
use crate::types::{Entry, LogId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path(), "suite").expect("open store");
        Ok((dir, store.log, store.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}

fn project(id: &str) -> Record {
    Record::Project(Project {
        id: id.parse().unwrap(),
        name: id.to_uppercase(),
        headers: Default::default(),
        bot: Default::default(),
        limits: Default::default(),
        created_at: 1,
    })
}

fn log_id(index: u64) -> LogId {
    openraft::LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    }
}

fn entry(index: u64, req: Request) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(req),
    }
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.unwrap();
}

#[tokio::test]
async fn apply_emits_changes_and_retries_apply_once() {
    let dir = TempDir::new().unwrap();
    let mut store = Store::open(dir.path(), "c1").unwrap();
    let mut events = store.reader.subscribe();
    let put = Request::new(Command::Put {
        record: project("shop"),
    });
    let retry = put.clone();
    apply(
        &mut store.state_machine,
        vec![entry(1, put), entry(2, retry)],
    )
    .await;
    let set = events.recv().await.unwrap();
    assert_eq!(set.index, 2);
    assert_eq!(
        set.changes,
        vec![Change::Put(project("shop"))],
        "the retry must not apply again"
    );
    assert_eq!(
        store
            .reader
            .get(&RecordKey::Project {
                id: "shop".parse().unwrap()
            })
            .unwrap(),
        Some(project("shop"))
    );
    assert_eq!(store.reader.applied_index(), 2);
}

#[tokio::test]
async fn entries_that_change_nothing_still_announce_their_index() {
    let dir = TempDir::new().unwrap();
    let mut store = Store::open(dir.path(), "c1").unwrap();
    let mut events = store.reader.subscribe();
    // A new leader's blank entry: applied, nothing changed.
    let blank = Entry {
        log_id: log_id(1),
        payload: EntryPayload::Blank,
    };
    let stream = futures::stream::iter([Ok((blank, None))]);
    store.state_machine.apply(stream).await.unwrap();
    let set = events.recv().await.unwrap();
    assert_eq!((set.index, set.changes.len()), (1, 0));
    assert_eq!(store.reader.applied_index(), 1);
}

#[tokio::test]
async fn a_stale_fencing_token_is_refused() {
    let dir = TempDir::new().unwrap();
    let mut store = Store::open(dir.path(), "c1").unwrap();
    let acquire = |holder| {
        Request::new(Command::AcquireLease {
            name: "acme-a.test".parse().unwrap(),
            holder,
            ttl_ms: 1000,
        })
    };
    let mut first = acquire(1);
    first.at = 10_000;
    let mut stolen = acquire(2);
    stolen.at = 20_000; // after the first lease expired
    let mut late_write = Request::new(Command::Fenced {
        lease: "acme-a.test".parse().unwrap(),
        token: 1,
        command: Box::new(Command::Put {
            record: project("late"),
        }),
    });
    late_write.at = 20_001;
    apply(
        &mut store.state_machine,
        vec![entry(1, first), entry(2, stolen), entry(3, late_write)],
    )
    .await;
    assert_eq!(
        store
            .reader
            .get(&RecordKey::Project {
                id: "late".parse().unwrap()
            })
            .unwrap(),
        None
    );
    match store
        .reader
        .get(&RecordKey::Lease {
            name: "acme-a.test".parse().unwrap(),
        })
        .unwrap()
    {
        Some(Record::Lease(l)) => assert_eq!((l.holder, l.token), (2, 2)),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_round_trip_replaces_the_whole_state() {
    let src_dir = TempDir::new().unwrap();
    let mut src = Store::open(src_dir.path(), "c1").unwrap();
    let entries = (1..=300)
        .map(|i| {
            entry(
                i,
                Request::new(Command::Put {
                    record: project(&format!("p{i}")),
                }),
            )
        })
        .collect();
    apply(&mut src.state_machine, entries).await;
    let mut builder = src.state_machine.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(300)));

    let dst_dir = TempDir::new().unwrap();
    let mut dst = Store::open(dst_dir.path(), "c1").unwrap();
    apply(
        &mut dst.state_machine,
        vec![entry(
            1,
            Request::new(Command::Put {
                record: project("stale"),
            }),
        )],
    )
    .await;
    let incoming = SnapshotFile::incoming(&dst_dir.path().join("snapshots"));
    std::fs::copy(&snap.snapshot.path, &incoming.path).unwrap();
    let mut events = dst.reader.subscribe();
    dst.state_machine
        .install_snapshot(&snap.meta, incoming)
        .await
        .unwrap();
    assert_eq!(events.recv().await.unwrap().changes, vec![Change::Reset]);
    assert_eq!(
        dst.reader.count(crate::model::prefix::PROJECT).unwrap(),
        300
    );
    assert_eq!(
        dst.reader
            .get(&RecordKey::Project {
                id: "stale".parse().unwrap()
            })
            .unwrap(),
        None
    );
    let (applied, _) = dst.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(300)));
    let current = dst
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(300)));
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_state_kept() {
    let src_dir = TempDir::new().unwrap();
    let mut src = Store::open(src_dir.path(), "c1").unwrap();
    apply(
        &mut src.state_machine,
        vec![entry(
            1,
            Request::new(Command::Put {
                record: project("a"),
            }),
        )],
    )
    .await;
    let snap = src
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = std::fs::read(&snap.snapshot.path).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0xff;
    let dst_dir = TempDir::new().unwrap();
    let mut dst = Store::open(dst_dir.path(), "c1").unwrap();
    apply(
        &mut dst.state_machine,
        vec![entry(
            1,
            Request::new(Command::Put {
                record: project("kept"),
            }),
        )],
    )
    .await;
    let incoming = SnapshotFile::incoming(&dst_dir.path().join("snapshots"));
    std::fs::write(&incoming.path, bytes).unwrap();
    let err = dst
        .state_machine
        .install_snapshot(&snap.meta, incoming)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("checksum") || err.to_string().contains("damaged"),
        "{err}"
    );
    assert!(dst
        .reader
        .get(&RecordKey::Project {
            id: "kept".parse().unwrap()
        })
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_store_of_another_cluster_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(Store::open(dir.path(), "cluster-a").unwrap());
    let err = Store::open(dir.path(), "cluster-b")
        .err()
        .expect("must refuse");
    assert!(matches!(err, StoreError::OtherCluster { .. }), "{err}");
}

#[tokio::test]
async fn votes_and_logs_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let mut store = Store::open(dir.path(), "c1").unwrap();
        let vote = openraft::impls::Vote::new(3, 2);
        store.log.save_vote(&vote).await.unwrap();
        let e = entry(
            1,
            Request::new(Command::Put {
                record: project("x"),
            }),
        );
        store
            .log
            .append([e], openraft::storage::IOFlushed::noop())
            .await
            .unwrap();
    }
    let mut store = Store::open(dir.path(), "c1").unwrap();
    use openraft::RaftLogReader;
    assert_eq!(
        store.log.read_vote().await.unwrap(),
        Some(openraft::impls::Vote::new(3, 2))
    );
    assert_eq!(
        store.log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1))
    );
    let _ = Response::Internal;
}

#[tokio::test]
async fn a_budget_refuses_uses_beyond_its_limit_until_the_window_moves_on() {
    let dir = TempDir::new().unwrap();
    let mut store = Store::open(dir.path(), "c1").unwrap();
    let spend = |at| {
        let mut r = Request::new(Command::Spend {
            name: "orders".parse().unwrap(),
            window_ms: 1000,
            limit: 2,
        });
        r.at = at;
        r
    };
    let stamps = |store: &Store| match store
        .reader
        .get(&RecordKey::RateWindow {
            name: "orders".parse().unwrap(),
        })
        .unwrap()
    {
        Some(Record::RateWindow(w)) => w.stamps,
        other => panic!("unexpected {other:?}"),
    };
    let entries = vec![
        entry(1, spend(10_000)),
        entry(2, spend(10_100)),
        entry(3, spend(10_200)),
    ];
    apply(&mut store.state_machine, entries).await;
    assert_eq!(
        stamps(&store),
        vec![10_000, 10_100],
        "the third use is refused"
    );
    // A window later the first use has left it: one more fits.
    apply(&mut store.state_machine, vec![entry(4, spend(11_050))]).await;
    assert_eq!(stamps(&store), vec![10_100, 11_050]);
}

#[tokio::test]
async fn create_does_not_replace_what_exists() {
    let dir = TempDir::new().unwrap();
    let mut store = Store::open(dir.path(), "c1").unwrap();
    let mut second = project("p");
    if let Record::Project(p) = &mut second {
        p.name = "second".into();
    }
    let entries = vec![
        entry(
            1,
            Request::new(Command::Create {
                record: project("p"),
            }),
        ),
        entry(2, Request::new(Command::Create { record: second })),
    ];
    apply(&mut store.state_machine, entries).await;
    match store
        .reader
        .get(&RecordKey::Project {
            id: "p".parse().unwrap(),
        })
        .unwrap()
    {
        Some(Record::Project(p)) => assert_eq!(p.name, "P"),
        other => panic!("unexpected {other:?}"),
    }
}
