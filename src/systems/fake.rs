//! A scriptable system for the engine's own tests: an in-memory store that fails on cue, so
//! that retries, refusals, reconnects and count checks are tested without servers or sleeps.
//! Every adapter is still tested against its real server; this one tests only the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::toolkit::{Holding, Marker};
use super::{Instance, System, SystemDef, TEST_HOOKS};
use crate::dataset::{DataSet, FileEntry};
use crate::model::{ErrorKind, Layout, Measured, Meter, ServerInfo, SysError, SysResult};
use crate::probe::{ProbeKeys, Probes};

/// The kind every fake instance has (it is not in the registry).
pub static DEF: SystemDef = SystemDef {
    kind: "fake",
    aliases: &[],
    embedded: true,
    about: "a scriptable in-memory system for the engine's tests",
    build: |_| unreachable!("fakes are built by the tests"),
    lab: &[],
    native_loader: None,
    tests: TEST_HOOKS,
};

/// An operation of the fake, for scripting failures and counting calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `connect`.
    Connect,
    /// `inspect`.
    Inspect,
    /// `bulk_insert`.
    Bulk,
    /// `insert_one`.
    Insert,
    /// `delete_one`.
    Delete,
    /// `count`.
    Count,
    /// A look of the meter: a native size or a snapshot.
    Measure,
}

/// What the test scripts and what the fake records; shared between the test and the fake.
#[derive(Debug, Default)]
pub struct Script {
    /// Failures to inject: the `n`-th call (from 1, counted over the whole run) of an
    /// operation fails with the kind.
    pub fail: Vec<(Op, u32, ErrorKind)>,
    /// Every connect fails as a lost connection: a server down from the start.
    pub down: bool,
    /// After a scripted lost connection, this many connects fail before one succeeds.
    pub outage: u32,
    /// Connects still to fail in the current outage.
    pub failing_connects: u32,
    /// The namespace holds data dedup-lab did not create.
    pub foreign: bool,
    /// The marker's text, as the namespace holds it.
    pub marker: Option<String>,
    /// The `n`-th count (from 1) reports one entry fewer than stored.
    pub miscount: Option<u32>,
    /// `interrupted_since` reports an outage during the `n`-th stage (from 1).
    pub interrupted_in_stage: Option<u32>,
    /// Calls so far, per operation.
    pub calls: HashMap<Op, u32>,
    /// When each connect happened (tokio's clock, which tests pause).
    pub connects: Vec<tokio::time::Instant>,
    /// Stages counted by the engine's `interrupted_since` questions.
    pub stages: u32,
    /// Deletes that reached the store.
    pub deletes: u32,
    /// How long each per-file insert takes (tokio's clock, which tests pause).
    pub insert_time: std::time::Duration,
    /// Meters made (one per connection the engine kept).
    pub meters: u32,
    /// Stored entries: key → size.
    pub store: BTreeMap<String, u64>,
}

impl Script {
    /// Counts a call of `op` and fails it if the script says so.
    fn call(&mut self, op: Op) -> SysResult<()> {
        let n = {
            let n = self.calls.entry(op).or_default();
            *n += 1;
            *n
        };
        let Some(&(_, _, kind)) = self.fail.iter().find(|(o, at, _)| *o == op && *at == n) else {
            return Ok(());
        };
        if kind == ErrorKind::ConnectionLost {
            self.failing_connects = self.outage;
        }
        Err(SysError {
            kind,
            message: format!("fake: {op:?} call {n} failed as scripted"),
        })
    }
}

/// A fake instance: its script and its store.
pub struct Fake {
    name: String,
    layout: Layout,
    script: Arc<Mutex<Script>>,
}

impl Fake {
    /// A fake named `name` that lays files out as `layout`, with its script; returns the
    /// instance, adapter and probes as the engine takes them.
    pub fn subject(
        name: &str,
        layout: Layout,
        script: Arc<Mutex<Script>>,
    ) -> (Instance, Box<dyn System>, Probes) {
        let instance = Instance {
            name: name.to_string(),
            def: &DEF,
            section: None,
            probe_keys: ProbeKeys::default(),
            layout,
            own_layout: true,
        };
        let probes = Probes::build(name, &ProbeKeys::default()).expect("native probe");
        let fake = Fake {
            name: name.to_string(),
            layout,
            script,
        };
        (instance, Box::new(fake), probes)
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }

    fn call(&self, op: Op) -> SysResult<()> {
        self.script().call(op)
    }

    /// The entry of `f`: its container and key.
    fn key(&self, f: &FileEntry) -> String {
        format!("{}/{}", self.layout.container_of(f), self.layout.key_of(f))
    }
}

fn lock(script: &Mutex<Script>) -> MutexGuard<'_, Script> {
    script.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake's meter: its store's sizes, failing on cue as [`Op::Measure`].
struct FakeMeter {
    script: Arc<Mutex<Script>>,
}

#[async_trait]
impl Measured for FakeMeter {
    fn native_copies(&self) -> Option<u32> {
        Some(1)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        let mut s = lock(&self.script);
        s.call(Op::Measure)?;
        Ok(s.store.values().sum())
    }
}

#[async_trait]
impl Meter for FakeMeter {
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let mut s = lock(&self.script);
        s.call(Op::Measure)?;
        Ok(BTreeMap::from([(
            "entries".to_string(),
            s.store.len() as f64,
        )]))
    }
}

#[async_trait]
impl System for Fake {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        "memory".into()
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        {
            let mut s = self.script();
            s.connects.push(tokio::time::Instant::now());
            if s.failing_connects > 0 {
                s.failing_connects -= 1;
                return Err(SysError::connection("fake: server is away"));
            }
            if s.down {
                return Err(SysError::connection("fake: server is down"));
            }
        }
        self.call(Op::Connect)?;
        Ok(ServerInfo {
            product: "fake".into(),
            version: "1".into(),
        })
    }

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        self.script().meters += 1;
        Ok(Box::new(FakeMeter {
            script: Arc::clone(&self.script),
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        self.call(Op::Inspect)?;
        let s = self.script();
        Ok(match (&s.marker, s.foreign) {
            (_, true) => Holding::Foreign("the fake holds someone else's data".into()),
            (Some(text), false) => Holding::Marked(text.clone()),
            (None, false) => Holding::Absent,
        })
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let mut s = self.script();
        s.store.clear();
        s.marker = Some(marker.text.clone());
        Ok(())
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        self.call(Op::Bulk)?;
        for f in &ds.manifest.files {
            let key = self.key(f);
            self.script().store.insert(key, f.size);
        }
        Ok(())
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        self.call(Op::Insert)?;
        let took = self.script().insert_time;
        tokio::time::sleep(took).await;
        let key = self.key(file);
        self.script().store.insert(key, content.len() as u64);
        Ok(())
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        self.call(Op::Delete)?;
        self.script().deletes += 1;
        let key = self.key(file);
        let removed = self.script().store.remove(&key);
        match removed {
            Some(_) => Ok(()),
            None => Err(SysError::failed(format!(
                "fake: {} is not stored",
                file.name
            ))),
        }
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        Ok("none".into())
    }

    async fn settle(&mut self) -> SysResult<()> {
        Ok(())
    }

    async fn count(&mut self) -> SysResult<u64> {
        self.call(Op::Count)?;
        let s = self.script();
        let off = u64::from(s.miscount == Some(s.calls[&Op::Count]));
        Ok(s.store.len() as u64 - off.min(s.store.len() as u64))
    }

    fn interrupted_since(&self, _since: std::time::Instant) -> Option<String> {
        let mut s = self.script();
        s.stages += 1;
        (s.interrupted_in_stage == Some(s.stages)).then(|| "fake: outage as scripted".into())
    }
}
