//! Where the allocator's state lives between runs: the peer and range the store belongs to,
//! the ring, and every container's addresses.
//!
//! The allocator never touches the disk; it emits [`StoreOp`]s, and the shell applies each
//! batch in one durable transaction before it lets any reply or gossip out. So whatever a
//! client or a peer has seen survives a kill -9. [`RedbStore`] keeps the state in a redb
//! file (`weave-router-ipam.redb` in `--db-dir`); [`MemoryStore`] is the same contract in
//! memory, for the simulator.
//!
//! A store that cannot be read is refused, never reset: losing it would hand out addresses
//! that running pods hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use crate::ids::PeerName;
use crate::ipam::address::{Address, Cidr, Range};
use crate::wire::ipam::{decode_ring, encode_ring, RingState};

/// The file in `--db-dir` that holds the store.
pub const FILE_NAME: &str = "weave-router-ipam.redb";

/// The layout this build reads and writes. Bump it when the layout changes.
pub const FORMAT_VERSION: u32 = 1;

/// What one identifier (a container id, or a name such as `weave:expose`) holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owned {
    /// True for a container (released with it); false for the bridge and other names.
    pub is_container: bool,
    /// The addresses, with the prefix length of the subnet each came from.
    pub cidrs: Vec<Cidr>,
}

/// One change to the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Marks the store as this peer's, for this range (written once, when the store is new).
    SetIdentity {
        /// The peer's name.
        peer: PeerName,
        /// The cluster range.
        range: Range,
    },
    /// Replaces the ring.
    SetRing(RingState),
    /// Sets what one identifier holds.
    PutOwned {
        /// Container id or name.
        ident: String,
        /// What it holds.
        owned: Owned,
    },
    /// Forgets an identifier.
    DeleteOwned {
        /// Container id or name.
        ident: String,
    },
}

/// Everything a store holds, as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Persisted {
    /// The peer the store belongs to; `None` for a new store.
    pub peer: Option<PeerName>,
    /// The range the store was created for; `None` for a new store.
    pub range: Option<Range>,
    /// The ring, once there is one.
    pub ring: Option<RingState>,
    /// Every identifier's addresses.
    pub owned: BTreeMap<String, Owned>,
}

/// A store the shell can load at start and apply the allocator's changes to.
pub trait Store {
    /// Reads everything.
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Applies the changes atomically and durably: all of them or none.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a redb database, or is damaged beyond what redb repairs.
    #[error(
        "IPAM store {path} is corrupt or not a weave-router store ({detail}); it holds this \
         peer's addresses, so it is not reset: move it away and start again, then reclaim \
         this peer's old space from another peer with `weave-router rmpeer`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb or the decoder said.
        detail: String,
    },
    /// The file was written by a build with another layout.
    #[error(
        "IPAM store {path} has format version {found}, this weave-router reads version \
         {FORMAT_VERSION}: run the weave-router version that wrote it, or move the file away \
         and reclaim this peer's old space with `weave-router rmpeer`"
    )]
    ForeignVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: String,
    },
    /// Another process has the file open.
    #[error("IPAM store {path} is in use by another process (is another weave-router running with the same --db-dir?)")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The directory or file could not be created, read or written.
    #[error("IPAM store {path}: {detail}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The store in memory: for the simulator and unit tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Persisted,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            match op {
                StoreOp::SetIdentity { peer, range } => {
                    self.state.peer = Some(*peer);
                    self.state.range = Some(*range);
                }
                StoreOp::SetRing(ring) => self.state.ring = Some(ring.clone()),
                StoreOp::PutOwned { ident, owned } => {
                    self.state.owned.insert(ident.clone(), owned.clone());
                }
                StoreOp::DeleteOwned { ident } => {
                    self.state.owned.remove(ident);
                }
            }
        }
        Ok(())
    }
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OWNED: TableDefinition<&str, &[u8]> = TableDefinition::new("owned");
const KEY_FORMAT: &str = "format";
const KEY_PEER: &str = "peer";
const KEY_RANGE: &str = "range";
const KEY_RING: &str = "ring";
/// Prefix of the markers' keys in the meta table.
const FLAG_PREFIX: &str = "flag:";

/// The store in a redb file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) `dir/weave-router-ipam.redb`, creating `dir` if needed; refuses a
    /// file that is corrupt, of another format version, or open elsewhere.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            detail: format!("cannot create the directory: {e}"),
        })?;
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        let mut store = RedbStore { db, path };
        store.check_format()?;
        Ok(store)
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the marker `key` was set (see [`RedbStore::set_flag`]).
    pub fn flag(&self, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
        Ok(meta
            .get(format!("{FLAG_PREFIX}{key}").as_str())
            .map_err(|e| self.io(e))?
            .is_some())
    }

    /// Sets the marker `key` durably: a fact about the store's history (such as "this peer
    /// takes part in Kubernetes reclaim"), kept beside the state.
    pub fn set_flag(&mut self, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert(format!("{FLAG_PREFIX}{key}").as_str(), [1u8].as_slice())
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Deletes the store of `dir` (which must not be open): for a peer whose space the
    /// cluster gave to others while it was away, whose ring would clash with theirs.
    pub fn remove(dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(FILE_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io {
                path,
                detail: format!("cannot remove: {e}"),
            }),
        }
    }

    /// Writes the format version into a new file; refuses a file with another one.
    fn check_format(&mut self) -> Result<(), StoreError> {
        let found = {
            let txn = self.db.begin_read().map_err(|e| self.io(e))?;
            match txn.open_table(META) {
                Ok(table) => table
                    .get(KEY_FORMAT)
                    .map_err(|e| self.io(e))?
                    .map(|v| v.value().to_vec()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(self.corrupt(e)),
            }
        };
        match found {
            Some(bytes) if bytes == FORMAT_VERSION.to_le_bytes() => Ok(()),
            Some(bytes) => Err(StoreError::ForeignVersion {
                path: self.path.clone(),
                found: match <[u8; 4]>::try_from(bytes.as_slice()) {
                    Ok(b) => u32::from_le_bytes(b).to_string(),
                    Err(_) => format!("{bytes:02x?}"),
                },
            }),
            None => {
                let has_data = {
                    let txn = self.db.begin_read().map_err(|e| self.io(e))?;
                    let n = txn.list_tables().map_err(|e| self.io(e))?.count();
                    n > 0
                };
                if has_data {
                    return Err(StoreError::ForeignVersion {
                        path: self.path.clone(),
                        found: "none (a redb file of some other program)".into(),
                    });
                }
                let txn = self.db.begin_write().map_err(|e| self.io(e))?;
                {
                    let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
                    meta.insert(KEY_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| self.io(e))?;
                    txn.open_table(OWNED).map_err(|e| self.io(e))?;
                }
                txn.commit().map_err(|e| self.io(e))
            }
        }
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path },
        redb::DatabaseError::UpgradeRequired(v) => StoreError::ForeignVersion {
            path,
            found: format!("redb file format {v}"),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() != std::io::ErrorKind::InvalidData =>
        {
            StoreError::Io {
                path,
                detail: io.to_string(),
            }
        }
        other => StoreError::Corrupt {
            path,
            detail: other.to_string(),
        },
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(|e| self.io(e))?
                .map(|v| v.value().to_vec()))
        };
        let peer = match get(KEY_PEER)? {
            None => None,
            Some(b) => Some(
                <[u8; 8]>::try_from(b.as_slice())
                    .ok()
                    .and_then(|b| PeerName::from_u64(u64::from_le_bytes(b)))
                    .ok_or_else(|| self.corrupt("bad peer name"))?,
            ),
        };
        let range = match get(KEY_RANGE)? {
            None => None,
            Some(b) => Some(decode_range(&b).ok_or_else(|| self.corrupt("bad range"))?),
        };
        let ring = match get(KEY_RING)? {
            None => None,
            Some(b) => Some(decode_ring(&b).map_err(|e| self.corrupt(format!("ring: {e}")))?),
        };
        let mut owned = BTreeMap::new();
        let table = txn.open_table(OWNED).map_err(|e| self.corrupt(e))?;
        for row in table.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let o = decode_owned(v.value())
                .ok_or_else(|| self.corrupt(format!("allocation of {}", k.value())))?;
            owned.insert(k.value().to_string(), o);
        }
        Ok(Persisted {
            peer,
            range,
            ring,
            owned,
        })
    }

    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            let mut table = txn.open_table(OWNED).map_err(|e| self.io(e))?;
            for op in ops {
                let r = match op {
                    StoreOp::SetIdentity { peer, range } => {
                        let first = meta
                            .insert(KEY_PEER, peer.as_u64().to_le_bytes().as_slice())
                            .map(|_| ());
                        first.and_then(|()| {
                            meta.insert(KEY_RANGE, encode_range(*range).as_slice())
                                .map(|_| ())
                        })
                    }
                    StoreOp::SetRing(ring) => meta
                        .insert(KEY_RING, encode_ring(ring).as_slice())
                        .map(|_| ()),
                    StoreOp::PutOwned { ident, owned } => table
                        .insert(ident.as_str(), encode_owned(owned).as_slice())
                        .map(|_| ()),
                    StoreOp::DeleteOwned { ident } => table.remove(ident.as_str()).map(|_| ()),
                };
                r.map_err(|e| self.io(e))?;
            }
        }
        txn.commit().map_err(|e| self.io(e))
    }
}

fn encode_range(r: Range) -> [u8; 8] {
    let mut b = [0; 8];
    b[..4].copy_from_slice(&r.start.0.to_be_bytes());
    b[4..].copy_from_slice(&r.end.0.to_be_bytes());
    b
}

fn decode_range(b: &[u8]) -> Option<Range> {
    let b = <[u8; 8]>::try_from(b).ok()?;
    let start = Address(u32::from_be_bytes(b[..4].try_into().ok()?));
    let end = Address(u32::from_be_bytes(b[4..].try_into().ok()?));
    (start <= end).then_some(Range { start, end })
}

/// `is_container` byte, then 5 bytes (address, prefix length) per CIDR.
fn encode_owned(o: &Owned) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + 5 * o.cidrs.len());
    b.push(u8::from(o.is_container));
    for c in &o.cidrs {
        b.extend_from_slice(&c.addr.0.to_be_bytes());
        b.push(c.prefix_len);
    }
    b
}

fn decode_owned(b: &[u8]) -> Option<Owned> {
    let (&flag, rest) = b.split_first()?;
    if flag > 1 || rest.len() % 5 != 0 {
        return None;
    }
    let cidrs = rest
        .chunks_exact(5)
        .map(|c| {
            let addr = Address(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            (c[4] <= 32).then_some(Cidr {
                addr,
                prefix_len: c[4],
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Owned {
        is_container: flag == 1,
        cidrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipam::Entry;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn sample_ops() -> Vec<StoreOp> {
        let range = Range {
            start: Address(0x0a20_0000),
            end: Address(0x0a2f_ffff),
        };
        vec![
            StoreOp::SetIdentity {
                peer: name(7),
                range,
            },
            StoreOp::SetRing(RingState {
                start: range.start,
                end: range.end,
                peer: name(7),
                entries: vec![Entry {
                    token: range.start,
                    peer: name(7),
                    version: 3,
                    free: 1000,
                }],
                seeds: vec![name(7)],
            }),
            StoreOp::PutOwned {
                ident: "c1".into(),
                owned: Owned {
                    is_container: true,
                    cidrs: vec![Cidr {
                        addr: Address(0x0a20_0001),
                        prefix_len: 12,
                    }],
                },
            },
            StoreOp::PutOwned {
                ident: "weave:expose".into(),
                owned: Owned {
                    is_container: false,
                    cidrs: vec![Cidr {
                        addr: Address(0x0a20_0002),
                        prefix_len: 12,
                    }],
                },
            },
            StoreOp::DeleteOwned { ident: "c1".into() },
        ]
    }

    #[test]
    fn redb_store_keeps_what_memory_store_keeps_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemoryStore::default();
        mem.apply(&sample_ops()).unwrap();
        {
            let mut store = RedbStore::open(dir.path()).unwrap();
            assert_eq!(store.load().unwrap(), Persisted::default());
            store.apply(&sample_ops()).unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded, mem.load().unwrap());
        assert_eq!(loaded.owned.len(), 1);
        assert_eq!(loaded.peer, Some(name(7)));
    }

    #[test]
    fn flags_persist_beside_the_state_and_remove_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = RedbStore::open(dir.path()).unwrap();
            assert!(!store.flag("peer-reclaim").unwrap());
            store.apply(&sample_ops()).unwrap();
            store.set_flag("peer-reclaim").unwrap();
        }
        {
            let store = RedbStore::open(dir.path()).unwrap();
            assert!(store.flag("peer-reclaim").unwrap());
            assert!(!store.flag("other").unwrap());
            assert_eq!(store.load().unwrap().owned.len(), 1, "a flag is not state");
        }
        RedbStore::remove(dir.path()).unwrap();
        RedbStore::remove(dir.path()).unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(!store.flag("peer-reclaim").unwrap());
        assert_eq!(store.load().unwrap(), Persisted::default());
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        let err = RedbStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains(FILE_NAME));
    }

    #[test]
    fn a_file_of_garbage_is_refused_as_corrupt_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(&path, &garbage).unwrap();
        let err = RedbStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains("move it away"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "the file is not touched"
        );
    }

    #[test]
    fn another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(KEY_FORMAT, 99u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::ForeignVersion { .. }), "{err}");
        assert!(err.to_string().contains("format version 99"), "{err}");
    }

    #[test]
    fn a_redb_file_of_another_program_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            let def: TableDefinition<u64, u64> = TableDefinition::new("other");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::ForeignVersion { .. }), "{err}");
    }

    #[test]
    fn owned_encoding_round_trips_and_refuses_bad_bytes() {
        let o = Owned {
            is_container: true,
            cidrs: vec![
                Cidr {
                    addr: Address(1),
                    prefix_len: 32,
                },
                Cidr {
                    addr: Address(u32::MAX),
                    prefix_len: 0,
                },
            ],
        };
        assert_eq!(decode_owned(&encode_owned(&o)), Some(o));
        assert_eq!(decode_owned(&[]), None);
        assert_eq!(decode_owned(&[2]), None);
        assert_eq!(decode_owned(&[1, 0, 0, 0, 1]), None);
        assert_eq!(decode_owned(&[1, 0, 0, 0, 1, 33]), None);
    }
}
