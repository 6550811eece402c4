// Package file is lnvault's file backend: a backup in one local file, named
// by a URL file:///abs/path. Package backends wires it to the "file"
// scheme with lnvault.Open.
//
// Two formats, both big-endian, both read and written:
//
// # Format 1 (the Python backup plugin's)
//
// Header, 512 bytes at offset 0:
//
//	u32 file_version (1) | u32 version | u64 end_offset | u32 prev_version |
//	u64 last_record_offset | u64 version_count | zero padding
//
// Records from offset 512, back to back:
//
//	u32 payload_len | u32 version | u8 type (1 transaction, 2 snapshot) | payload
//
// A transaction's payload is its statements joined by NUL. Readers follow the
// reference: sequentially from 512, stop after the first record whose version
// is >= the header's version (orphans of the reference plugin's rewind lie
// beyond); when the head is a repeated version the records of that version up
// to end_offset are read too. A file that ends before that record is
// truncated. Append: record at end_offset, fdatasync, header, fdatasync (the
// single header must not point past a record that is not durable).
//
// # Format 2 (lnvault's default)
//
// Goals: one fdatasync per append, and any truncation or bit flip detected.
// Two header slots of 512 bytes at offsets 0 and 512; records from 1024.
//
//	header: u32 file_version (2) | u32 version | u64 end_offset |
//	        u32 prev_version | u64 last_record_offset | u64 version_count |
//	        u64 seq | i64 last_change_unix_nano | u64 record_count |
//	        zero padding | u32 crc32c(bytes 0..508) at 508
//
// The valid slot with the highest seq is the header. An append writes the
// record at end_offset, then the new header (seq+1) into the slot of the older
// header, then fdatasyncs once: after a crash the newest valid header
// describes exactly the records that were acknowledged, and bytes past its
// end_offset (an append whose header did not land) are ignored by readers and
// truncated by the next writer. A new file has both slots written.
//
// A format-2 writer keeps zero-filled room ahead of its records (written and
// fdatasynced while it waits for the next change, 256 KiB at a time, up to
// 1 MiB ahead), so an append overwrites written blocks inside the file instead
// of growing it, and its fdatasync has no size or extent change for the
// journal to commit. That room past
// end_offset reads as zeros: the next writer takes it as it is (only non-zero
// bytes there are an interrupted append), Close gives it back, and Status
// reports end_offset as the backup's size.
//
//	record: u32 stored_len | u32 version | u8 type | u8 codec | u16 0 |
//	        u32 raw_len | u32 crc | stored payload
//
// crc is CRC-32C of the stored payload followed by the record header's first
// 16 bytes (payload first, so a snapshot can be compressed in one streaming
// pass and its header filled in afterwards). Codecs: 0 raw (transactions);
// 1 zstd (snapshots, streamed; stored compressed only when that makes them
// smaller); 2 zstd with the built-in dictionary cln-sql-v1.dict (ID 1: Core
// Lightning's statement templates with literals blanked; its bytes are pinned
// by a test and never change), which earlier releases used for transactions
// and which is still read. Transactions are stored raw because compressing
// them on the ack path cost more of a payment's latency than their bytes do.
//
// Readers check every record's CRC, version continuity (a transaction's
// version equals the previous one or the next; a snapshot may start
// anywhere), that the last record is the header's version at
// last_record_offset and ends at end_offset, the record count, and that the
// file is not shorter than end_offset. Any deviation is a
// *lnvault.CorruptError naming the offset. A damaged header slot next to a
// valid one is reported by Stream after the records of the valid one; the
// writer carries on from the valid header when the damage can be an
// interrupted append (at most one record past its end) and refuses otherwise.
//
// # Both formats
//
// Rewind writes the header of the previous state (last_record_offset 0 marks
// that a second rewind is refused), fdatasyncs, then truncates the rewound
// record away and fdatasyncs again, so a crash in between leaves an orphan
// tail, never a header pointing past the end of the file. A writer holds an
// exclusive flock on <path>.lock (compaction replaces the data file by
// rename). Readers take no lock: they read a consistent header and then only
// up to its end_offset. Compact folds every record before the head into one
// snapshot record, building it without the append lock and swapping the file
// by rename under the lock.
package file
