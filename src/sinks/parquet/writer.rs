//! One Parquet file being written: an [`ArrowWriter`] over an in-memory buffer that the sink
//! drains into the store's [`crate::store::Upload`] as row groups are flushed, so a file is
//! never whole in memory.

use std::sync::Mutex;

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::schema::{self, BatchBuilder, Encoding};
use crate::event::{Event, EventType};

/// zstd level of the pages. Level 1 compresses this text almost as well as 3 (within a few
/// per cent) at about twice the speed; see `benches/parquet.rs`.
pub const ZSTD_LEVEL: i32 = 1;

/// Most input bytes in one Arrow record batch (keeps string offsets far below `i32::MAX` and
/// the copy of a write's events small).
const MAX_RECORD_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The writer properties of `event_type`'s files: zstd, dictionary encoding only where values
/// repeat, no statistics on long text, row groups of about `row_group_bytes` (encoded).
pub fn properties(event_type: EventType, row_group_bytes: usize) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_dictionary_enabled(false)
        .set_max_row_group_bytes(Some(row_group_bytes.max(1)))
        .set_created_by(format!("evalsink {}", env!("CARGO_PKG_VERSION")));
    for column in schema::columns(event_type) {
        let path = ColumnPath::from(column.name);
        match column.encoding {
            Encoding::Dictionary => {
                builder = builder.set_column_dictionary_enabled(path, true);
            }
            Encoding::Plain => {}
            Encoding::Long => {
                builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
            }
        }
    }
    builder.build()
}

/// A Parquet file in the making, for one event type.
pub struct FileWriter {
    event_type: EventType,
    /// In a mutex only to be `Sync` (the sink is shared by reference across awaits); it is
    /// reached through `get_mut`, or locked uncontended for the size estimates.
    writer: Mutex<ArrowWriter<Vec<u8>>>,
    rows: usize,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("event_type", &self.event_type)
            .field("rows", &self.rows)
            .field("size", &self.size())
            .finish()
    }
}

impl FileWriter {
    pub fn new(event_type: EventType, row_group_bytes: usize) -> Result<FileWriter, ParquetError> {
        let writer = ArrowWriter::try_new(
            Vec::new(),
            schema::schema(event_type),
            Some(properties(event_type, row_group_bytes)),
        )?;
        Ok(FileWriter {
            event_type,
            writer: Mutex::new(writer),
            rows: 0,
        })
    }

    /// Encodes `events` (all of this writer's type) as rows.
    pub fn write<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
        rows_hint: usize,
        bytes_hint: usize,
    ) -> Result<(), ParquetError> {
        let mut builder = BatchBuilder::new(
            self.event_type,
            rows_hint,
            bytes_hint.min(MAX_RECORD_BATCH_BYTES),
        );
        let mut bytes = 0;
        for event in events {
            builder.append(event);
            bytes += event.size;
            if bytes >= MAX_RECORD_BATCH_BYTES {
                self.write_batch(&builder.finish()?)?;
                bytes = 0;
            }
        }
        if builder.rows() > 0 {
            self.write_batch(&builder.finish()?)?;
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.arrow().write(batch)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// About how large the file is so far: bytes already encoded into row groups plus the
    /// estimated encoded size of the row group in progress.
    pub fn size(&self) -> usize {
        let writer = self.writer.lock().expect("not poisoned");
        writer.bytes_written() + writer.in_progress_size()
    }

    /// Memory held by the row group in progress.
    pub fn buffered(&self) -> usize {
        self.writer.lock().expect("not poisoned").memory_size()
    }

    /// Flushes the row group in progress (to free its memory).
    pub fn flush_row_group(&mut self) -> Result<(), ParquetError> {
        self.arrow().flush()
    }

    fn arrow(&mut self) -> &mut ArrowWriter<Vec<u8>> {
        self.writer.get_mut().expect("not poisoned")
    }

    /// Bytes of the file ready to upload, once at least `min` of them are waiting.
    pub fn take(&mut self, min: usize) -> Option<Bytes> {
        let buffer = self.arrow().inner_mut();
        if buffer.is_empty() || buffer.len() < min {
            return None;
        }
        Some(Bytes::from(std::mem::take(buffer)))
    }

    /// Writes the last row group and the footer; returns the bytes not taken yet.
    pub fn finish(self) -> Result<Bytes, ParquetError> {
        let mut writer = self.writer.into_inner().expect("not poisoned");
        writer.finish()?;
        writer.sync()?;
        Ok(Bytes::from(std::mem::take(writer.inner_mut())))
    }
}

/// Encodes `events` into one whole Parquet file per event type, in memory (benchmarks and
/// tests; the sink streams instead).
pub fn encode_in_memory(
    events: &[Event],
    row_group_bytes: usize,
) -> Result<Vec<(EventType, Vec<u8>)>, ParquetError> {
    let mut out = Vec::new();
    for event_type in EventType::ALL {
        let of_type: Vec<&Event> = events
            .iter()
            .filter(|e| e.event_type() == event_type)
            .collect();
        if of_type.is_empty() {
            continue;
        }
        let bytes: usize = of_type.iter().map(|e| e.size).sum();
        let mut writer = FileWriter::new(event_type, row_group_bytes)?;
        let mut file = Vec::new();
        writer.write(of_type.iter().copied(), of_type.len(), bytes)?;
        while let Some(part) = writer.take(0) {
            file.extend_from_slice(&part);
        }
        file.extend_from_slice(&writer.finish()?);
        out.push((event_type, file));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::parquet::schema::tests::sample_events;
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::SerializedFileReader;

    #[test]
    fn files_read_back_with_their_schema_and_rows() {
        let mut events = Vec::new();
        for i in 0..300 {
            for mut e in sample_events() {
                e.id = format!("{}-{i}", e.id);
                events.push(e);
            }
        }
        let files = encode_in_memory(&events, 1 << 20).unwrap();
        assert_eq!(files.len(), EventType::ALL.len());
        for (event_type, bytes) in files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes.clone()))
                .unwrap()
                .build()
                .unwrap();
            let mut ids = Vec::new();
            for batch in reader {
                let batch = batch.unwrap();
                assert_eq!(batch.schema(), schema::schema(event_type));
                let col = batch.column_by_name("event_id").unwrap().as_string::<i32>();
                ids.extend(col.iter().map(|v| v.unwrap().to_string()));
            }
            let expected: Vec<String> = events
                .iter()
                .filter(|e| e.event_type() == event_type)
                .map(|e| e.id.clone())
                .collect();
            assert_eq!(ids, expected);

            let file = SerializedFileReader::new(Bytes::from(bytes)).unwrap();
            let meta = file.metadata();
            for column in meta.row_group(0).columns() {
                assert_eq!(
                    column.compression(),
                    Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).unwrap()),
                    "{}",
                    column.column_path()
                );
            }
        }
    }

    #[test]
    fn row_groups_are_cut_by_size_and_bytes_stream_out_as_they_are() {
        let mut events = Vec::new();
        for i in 0..20_000 {
            let mut e = sample_events().remove(0);
            e.id = format!("id-{i}");
            if let crate::event::Body::EvaluationQueued { code, .. } = &mut e.body {
                // Barely compressible text, so that the file grows.
                *code = format!("{:x}", i as u64 * 0x9E37_79B9_7F4A_7C15);
            }
            events.push(e);
        }
        let mut writer = FileWriter::new(EventType::EvaluationQueued, 64 * 1024).unwrap();
        let mut whole = Vec::new();
        for chunk in events.chunks(1000) {
            writer.write(chunk, chunk.len(), 0).unwrap();
            if let Some(part) = writer.take(1) {
                whole.extend_from_slice(&part);
            }
        }
        assert_eq!(writer.rows(), 20_000);
        assert!(
            !whole.is_empty(),
            "row groups were streamed out before the end"
        );
        whole.extend_from_slice(&writer.finish().unwrap());
        let reader = SerializedFileReader::new(Bytes::from(whole)).unwrap();
        assert!(reader.metadata().num_row_groups() > 2);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 20_000);
    }
}
