// Package scb keeps static channel backups (SCBs): the last-resort recovery
// data of a Lightning node whose database is lost.
//
// The shape follows lnd's chanbackup.SubSwapper: a Source yields the current
// packed backup (Core Lightning: the `staticbackup` RPC; lnd: its
// channel.backup file), a Keeper coalesces channel events, re-fetches and hands
// each changed set to every Swapper, whose UpdateAndSwap replaces the stored
// copy atomically. A local file swapper keeps one file plus a bounded archive;
// a StoreSwapper writes immutable, numbered versions to a Store (a folder next
// to a file backup, a plain directory, and later the backup server and object
// storage), each wrapped in an Envelope that carries the metadata `scb list`
// shows and a checksum that detects damage, optionally age-encrypted.
package scb

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Kind names what a backup holds, and so how `scb get` output is used.
type Kind string

const (
	// KindCLN is Core Lightning's per-channel SCBs, packed as the JSON array
	// of hex strings that `recoverchannel` takes as its scb parameter.
	KindCLN Kind = "cln-scb"
	// KindCLNEmergency is Core Lightning's emergency.recover file, byte for
	// byte (what `emergencyrecover` reads).
	KindCLNEmergency Kind = "cln-emergency-recover"
	// KindLNDMulti is lnd's channel.backup packed multi, byte for byte (what
	// `lncli restorechanbackup --multi_file` takes).
	KindLNDMulti Kind = "lnd-multi"
)

// Kinds lists the kinds lnvault produces.
var Kinds = []Kind{KindCLN, KindCLNEmergency, KindLNDMulti}

var kindRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// Valid tells whether k is well formed (lowercase letters, digits and dashes,
// at most 32 characters). Unknown but well-formed kinds are accepted so that a
// newer writer's versions still list.
func (k Kind) Valid() bool { return kindRE.MatchString(string(k)) }

// Known tells whether k is one of Kinds.
func (k Kind) Known() bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// ParseKind checks a user-given kind.
func ParseKind(s string) (Kind, error) {
	k := Kind(s)
	if !k.Known() {
		return "", fmt.Errorf("unknown SCB kind %q: use one of %s, %s, %s", s, KindCLN, KindCLNEmergency, KindLNDMulti)
	}
	return k, nil
}

// Backup is one complete packed backup, as a Source yields it and a Swapper
// stores it.
type Backup struct {
	Kind Kind
	Data []byte
	// Channels is the number of channels in Data, -1 when it cannot be known
	// without the node's key (lnd's multi, CLN's emergency.recover).
	Channels int
	SHA256   [32]byte
	// Taken is when the source produced it.
	Taken time.Time
}

// NewBackup returns a Backup of data, hashing it.
func NewBackup(kind Kind, data []byte, channels int) Backup {
	return Backup{Kind: kind, Data: data, Channels: channels, SHA256: sha256.Sum256(data), Taken: time.Now()}
}

// ShortHash is the first 12 hex digits of h, for logs and status.
func ShortHash(h [32]byte) string { return hex.EncodeToString(h[:6]) }

// Errors of the package; wrap with %w.
var (
	// ErrNoVersion: the store holds no (matching) version.
	ErrNoVersion = errors.New("no static channel backup version found")
	// ErrEncrypted: the version is encrypted and no identity was given.
	ErrEncrypted = errors.New("static channel backup is encrypted")
	// ErrWrongIdentity: none of the identities decrypts the version.
	ErrWrongIdentity = errors.New("none of the given age identities can decrypt this backup")
	// ErrInvalid: data is not a complete backup of its kind.
	ErrInvalid = errors.New("not a complete static channel backup")
)
