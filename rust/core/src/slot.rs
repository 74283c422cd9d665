//! Reader/writer-split output slots (docs/internals.md, "Output slots").
//!
//! Every data object of a running job (graph input or task output) is one write-once cell in the
//! job's [`SlotTable`]. Cells are never handed out raw: the producing task holds the only
//! [`SlotWriter`] (not `Clone`), consumers and the job-output list hold [`SlotReader`]s. Both are
//! plain indices (4 bytes) whose constructors are private to the crate, so the capability split
//! costs no memory. Values are `Arc<[u8]>`: one produced value is shared by every reader without
//! copying, and dropping the table frees every intermediate value while job outputs that were
//! read out survive.

use std::sync::OnceLock;

use crate::error::{CoreError, Result};
use crate::Payload;

/// Read capability on one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct SlotReader(u32);

/// Write-once capability on one slot; held only by the producer.
#[derive(Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct SlotWriter(u32);

#[derive(Debug, Default)]
pub struct SlotTable {
    cells: Box<[OnceLock<Payload>]>,
}

impl SlotTable {
    /// A table of `n` empty slots with one writer per slot (the caller distributes them).
    pub(crate) fn new(n: usize) -> (Self, Vec<SlotWriter>) {
        let cells = (0..n).map(|_| OnceLock::new()).collect();
        let writers = (0..n as u32).map(SlotWriter).collect();
        (Self { cells }, writers)
    }

    pub(crate) const fn reader(index: u32) -> SlotReader {
        SlotReader(index)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

impl SlotReader {
    /// The value, if produced. Cheap: clones an `Arc`.
    #[must_use]
    pub fn read(self, table: &SlotTable) -> Option<Payload> {
        table.cells.get(self.0 as usize)?.get().cloned()
    }

    /// Size of the value, if produced (no `Arc` clone).
    #[must_use]
    pub fn len(self, table: &SlotTable) -> Option<usize> {
        table.cells.get(self.0 as usize)?.get().map(|p| p.len())
    }

    #[must_use]
    pub const fn index(self) -> u32 {
        self.0
    }
}

impl SlotWriter {
    /// Fill the slot. A second write is an internal error (single assignment).
    ///
    /// # Errors
    /// `Internal` `TaskOutputAlreadyWritten` / `TaskGraphCorrupted`.
    pub fn write(&self, table: &SlotTable, value: Payload) -> Result<()> {
        let cell = table.cells.get(self.0 as usize).ok_or_else(|| {
            CoreError::internal(
                "TaskGraphCorrupted",
                format!("slot {} out of range", self.0),
            )
        })?;
        cell.set(value).map_err(|_| {
            CoreError::internal(
                "TaskOutputAlreadyWritten",
                format!("slot {} was already written", self.0),
            )
        })
    }

    #[must_use]
    pub const fn index(&self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    #[expect(
        clippy::many_single_char_names,
        reason = "table, writers, reader, value and errors of one short slot scenario"
    )]
    fn write_once_shared_read() {
        let (t, w) = SlotTable::new(2);
        let r = SlotTable::reader(1);
        assert_eq!(r.read(&t), None);
        let v: Payload = b"value".as_slice().into();
        w[1].write(&t, Arc::clone(&v)).expect("first write");
        let a = r.read(&t).expect("filled");
        assert!(
            Arc::ptr_eq(&a, &v),
            "readers share the value without copying"
        );
        let e = w[1].write(&t, v).expect_err("second write");
        assert_eq!(e.kind(), "TaskOutputAlreadyWritten");
        assert!(matches!(e, CoreError::Internal { .. }));
    }

    #[test]
    fn dropping_table_frees_values_readers_keep_theirs() {
        let (t, w) = SlotTable::new(1);
        let v: Payload = b"x".as_slice().into();
        w[0].write(&t, Arc::clone(&v)).expect("write");
        let kept = SlotTable::reader(0).read(&t).expect("read");
        assert_eq!(Arc::strong_count(&v), 3);
        drop(t);
        assert_eq!(Arc::strong_count(&v), 2);
        assert_eq!(&*kept, b"x");
    }
}
