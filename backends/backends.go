// Package backends enables every storage lnvault ships: importing it
// registers the file:, socket: and s3: URL schemes with lnvault.Open.
package backends

import (
	// Each storage package registers itself in its init; add one line per package.
	_ "github.com/lnvault/lnvault/file"        // file:///abs/path
	_ "github.com/lnvault/lnvault/replica/s3"  // s3:// (and dir://) replicas
	_ "github.com/lnvault/lnvault/scb/s3store" // s3:// static channel backups (scb list/get, the plugin)
	_ "github.com/lnvault/lnvault/socket"      // socket:host:port
)
