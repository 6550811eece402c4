// Package backends is the one list of the storage lnvault ships. Register
// wires each URL scheme into the three openers that take URLs: lnvault.Open
// (a backup), replica.ParseURL (an object store, for a backup or a
// server's replica) and scb.OpenStore (static channel backups kept beside a
// backup). Nothing registers itself on import: a binary or a test calls
// Register once, and what it supports is what this file says.
package backends

import (
	"sync"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/file"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/replica/dir"
	"github.com/lnvault/lnvault/replica/s3"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/scb/s3store"
	"github.com/lnvault/lnvault/socket"
)

var once sync.Once

// Register wires every scheme; calling it again does nothing.
func Register() { once.Do(register) }

func register() {
	// Backups (lnvault.Open).
	lnvault.Register("file", file.OpenBackend)      // file:///abs/path: a local file, the reference format or lnvault's checksummed one
	lnvault.Register("socket", socket.OpenBackend)  // socket:host:port: an lnvault server or the reference backup server
	lnvault.Register("s3", replica.OpenBackendURL)  // s3://bucket/prefix: object storage
	lnvault.Register("dir", replica.OpenBackendURL) // dir:///abs/path: object storage's layout in a local directory

	// Object stores behind s3:// and dir:// (replica.ParseURL).
	replica.RegisterStore("s3", s3.Params, s3.OpenURL)
	replica.RegisterStore("dir", nil, dir.OpenURL)

	// Static channel backup stores (scb.OpenStore); file: and dir: are
	// package scb's own.
	scb.RegisterStore("socket", socket.OpenSCBStoreURL) // the server's SCB store, over the protocol extension
	scb.RegisterStore("s3", s3store.OpenURL)            // <prefix>/scb/ beside an s3:// backup
}
