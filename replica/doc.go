// Package replica keeps a backup on object storage (S3-compatible, or a
// local directory such as a NAS mount) as immutable objects:
//
//	<prefix>/lnvault.json                        written once: a backup exists here
//	<prefix>/lease.json                          the one writer's lease
//	<prefix>/<generation>/snapshots/<index>_<version>_<created>.snap.zst
//	<prefix>/<generation>/segments/<first>-<last index>_<first>-<last version>_<created>.seg.zst
//
// Numbers are fixed-width hex so keys sort in log order; a change's index is
// its position in the log (versions repeat: migrations send 1,1,2,2,3...).
// A generation is one continuous history; a new one starts where continuity
// breaks (a rewind of a change already in a multi-change segment, or a
// replicator that finds the replica's head missing from the local log), with
// a snapshot of the state it starts from. Restores use the newest generation.
// Every object has a header with its indexes, versions, creation time and a
// CRC-32C over header and zstd body, verified on every read of the body (to
// learn the head, opening reads only the first 68 bytes of a snapshot); a gap
// between segments, a missing object or a checksum mismatch is a
// lnvault.CorruptError naming the object, never a shorter restore.
//
// Snapshot objects hold a whole database, which can be several GiB on a
// small board: they are compressed into and downloaded to temp files
// (os.TempDir, unlinked at once), so memory does not grow with the database;
// a snapshot change (`lnvault init --lightning-dir`) is stored as one.
// Segments are built in memory: they hold transactions.
//
// Two ways to use it:
//
//   - Backend, synchronous (s3://... in backup.lock). Request cost, honestly:
//     1 PUT per change (the change is durable when the PUT returns), plus
//     1 lease PUT every LeaseTTL/3 (10 s by default) while open. A rewind
//     costs 1 LIST + 1 DELETE + 1 GET; opening for writing 1 LIST, 1 GET,
//     2-3 lease requests (+1 conditional PUT at creation). Compact costs 1
//     LIST, 1 GET per object since the previous snapshot, 1 PUT of the
//     snapshot and 1 DELETE request per 1,000 objects retention drops.
//     With AWS S3 standard pricing a node doing 10,000 changes a day pays for
//     about 10,000 + 8,640 PUTs a day. Latency per change is one PUT round
//     trip.
//   - Replicator, the server's second tier (lnvault server --replicate):
//     changes are uploaded in background segments every second or 1 MiB, so
//     the cost is at most 1 PUT per second; lag is in Status(), which the
//     server exports on --metrics-addr as lnvault_replica_lag_versions,
//     lnvault_replica_lag_seconds, lnvault_replica_last_upload_timestamp_seconds
//     and lnvault_replica_upload_errors_total. A server restarted after a
//     crash waits up to one lease TTL for its dead predecessor's lease.
//
// Known limit: deleting the newest segment(s) of a generation cannot be told
// from their never having been written (no object names the head): such a
// restore ends at the previous change. Object versioning or a bucket policy
// that denies deletes protects against it.
//
// Point-in-time: Backend.StreamTo(target) starts from the newest snapshot at
// or before target; VersionAt(t) maps a time to a version from the creation
// times in the object names. Retention (?retention=24h&retain-snapshots=2)
// deletes snapshots beyond the newest N that are older than the duration,
// and the segments the oldest kept snapshot covers; nothing uncovered.
package replica
