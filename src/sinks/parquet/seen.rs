//! The event ids already stored in the Parquet datasets, so that a replay of the same files, or
//! the events a file source reads again after a restart, add no row twice: the cold tier is
//! exactly once like the others.
//!
//! A partition's ids are read from its stored files (their `event_id` column) the first time
//! this process writes to it, then kept up to date as files are written. Ids are kept as 64-bit
//! hashes (8 bytes and a little for each); the partitions least recently written are forgotten
//! when they hold more than [`MAX_IDS`] together, and read again if they are written again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::Partition;
use crate::store::{Store, StoreError};

/// Most ids remembered over all partitions (about 16 bytes each: 64 MiB at most).
const MAX_IDS: usize = 4_000_000;

/// The hash of an event id. `DefaultHasher::new()` has fixed keys: the same id gives the same
/// hash in every process. At 64 bits, two distinct ids of one partition collide (and the later
/// is wrongly taken as stored) with a probability below 10⁻⁵ for ten million events.
pub fn id_hash(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// The ids are hashes already: no need to hash them again.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdSet = HashSet<u64, BuildHasherDefault<Identity>>;

struct Known {
    ids: IdSet,
    /// For forgetting the least recently used partition first.
    used: u64,
}

#[derive(Default)]
pub struct Seen {
    partitions: HashMap<Partition, Known>,
    clock: u64,
    total: usize,
}

impl Seen {
    /// Makes sure `partition`'s stored ids are known, reading its files when they are not.
    pub async fn load(&mut self, store: &Store, partition: Partition) -> Result<(), StoreError> {
        self.clock += 1;
        if let Some(known) = self.partitions.get_mut(&partition) {
            known.used = self.clock;
            return Ok(());
        }
        let mut ids = IdSet::default();
        for key in store.list(&super::partition_prefix(partition)).await? {
            if !key.ends_with(".parquet") {
                continue;
            }
            let bytes = store.get(&key).await?;
            let read = tokio::task::spawn_blocking(move || stored_ids(bytes))
                .await
                .map_err(|e| StoreError::Failed(format!("reading {key} failed: {e}")))?;
            match read {
                Ok(found) => ids.extend(found),
                // A file that is not ours or is damaged does not stop the pipeline; its rows
                // are simply not known.
                Err(e) => tracing::warn!(
                    "Cannot read the event ids of {key} ({e}); events it holds may be stored again."
                ),
            }
        }
        self.total += ids.len();
        self.partitions.insert(
            partition,
            Known {
                ids,
                used: self.clock,
            },
        );
        self.forget_old(partition);
        Ok(())
    }

    /// Records `hash` in `partition` (loaded before); false when it was there already.
    pub fn insert(&mut self, partition: Partition, hash: u64) -> bool {
        let known = self.partitions.get_mut(&partition).expect("loaded first");
        let new = known.ids.insert(hash);
        self.total += new as usize;
        new
    }

    /// Takes back ids whose file could not be stored, so that writing them again is possible.
    pub fn remove(&mut self, partition: Partition, hashes: &[u64]) {
        if let Some(known) = self.partitions.get_mut(&partition) {
            for h in hashes {
                self.total -= known.ids.remove(h) as usize;
            }
        }
    }

    /// Forgets the least recently used partitions (never `keep`) while there are too many ids.
    fn forget_old(&mut self, keep: Partition) {
        while self.total > MAX_IDS {
            let Some(oldest) = self
                .partitions
                .iter()
                .filter(|(p, _)| **p != keep)
                .min_by_key(|(_, k)| k.used)
                .map(|(p, _)| *p)
            else {
                return;
            };
            let known = self.partitions.remove(&oldest).expect("present");
            self.total -= known.ids.len();
        }
    }
}

/// The id hashes of a stored Parquet file (only its `event_id` column is decoded).
fn stored_ids(bytes: bytes::Bytes) -> Result<Vec<u64>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let schema = builder.parquet_schema();
    let index = (0..schema.num_columns())
        .find(|&i| schema.column(i).name() == "event_id")
        .ok_or("no event_id column")?;
    let mask = ProjectionMask::leaves(schema, [index]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let column = batch.column(0);
        let strings = column
            .as_string_opt::<i32>()
            .ok_or("event_id is not a string column")?;
        for i in 0..strings.len() {
            if strings.is_valid(i) {
                ids.push(id_hash(strings.value(i)));
            }
        }
    }
    Ok(ids)
}
