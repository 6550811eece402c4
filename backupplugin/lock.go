package backupplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lnvault/lnvault/internal/durable"
	"github.com/lnvault/lnvault/sealed"
)

// LockFile is the name of the file, in lightningd's network directory (the
// plugin's cwd), that names the backup destinations.
const LockFile = "backup.lock"

// Lock is the content of backup.lock. backend_url is the reference plugin's
// field; backend_urls lets one node write to several destinations.
type Lock struct {
	BackendURL  string   `json:"backend_url,omitempty"`
	BackendURLs []string `json:"backend_urls,omitempty"`
	// Heal false stops the node, as the reference does, when its database
	// is ahead of the backup, instead of storing the database as a snapshot.
	Heal *bool `json:"heal,omitempty"`
	// Encryption, when set, seals every change end to end before it
	// leaves the node (package sealed): what every destination stores is
	// ciphertext only the operator's age identity opens.
	Encryption *Encryption `json:"encryption,omitempty"`
}

// Encryption is the end-to-end encryption of a backup, as `lnvault init
// --encrypt-to` records it.
type Encryption struct {
	BackupID   string   `json:"backup_id"`  // hex; bound into every sealed change
	Recipients []string `json:"recipients"` // age1... public keys; the node has no identity
	// Pad false stores changes at their size instead of padded to buckets.
	Pad *bool `json:"pad,omitempty"`
}

// Config is the sealing configuration, checked.
func (e *Encryption) Config() (sealed.Config, error) {
	id, err := sealed.ParseBackupID(e.BackupID)
	if err != nil {
		return sealed.Config{}, fmt.Errorf("encryption.backup_id: %w", err)
	}
	if len(e.Recipients) == 0 {
		return sealed.Config{}, errors.New("encryption names no recipients (age1... public keys)")
	}
	return sealed.Config{Backup: id, Recipients: e.Recipients, Pad: e.Pad == nil || *e.Pad}, nil
}

// HealEnabled tells whether a gap is healed at the first write (the default).
func (l Lock) HealEnabled() bool { return l.Heal == nil || *l.Heal }

// URLs returns every destination, backend_url first, without duplicates.
func (l Lock) URLs() []string {
	var out []string
	seen := map[string]bool{}
	for _, u := range append([]string{l.BackendURL}, l.BackendURLs...) {
		if u != "" && !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out
}

// ParseLock decodes and checks a backup.lock.
func ParseLock(data []byte) (Lock, error) {
	var l Lock
	if err := json.Unmarshal(data, &l); err != nil {
		return Lock{}, fmt.Errorf("not valid JSON: %w", err)
	}
	if len(l.URLs()) == 0 {
		return Lock{}, errors.New(`it names no destination (expected {"backend_url": "file:///..."})`)
	}
	if l.Encryption != nil {
		if _, err := l.Encryption.Config(); err != nil {
			return Lock{}, err
		}
	}
	return l, nil
}

// ReadLock reads dir/backup.lock. The error says what to run to create it.
func ReadLock(dir string) (Lock, error) {
	path := filepath.Join(dir, LockFile)
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Lock{}, fmt.Errorf("could not find %s: initialise the backup first with `lnvault init file:///path/to/backup.dbak --lightning-dir %s`", path, dir)
		}
		return Lock{}, fmt.Errorf("reading %s: %w", path, err)
	}
	l, err := ParseLock(data)
	if err != nil {
		return Lock{}, fmt.Errorf("%s is damaged: %v; recreate it with `lnvault init file:///path/to/backup.dbak --lightning-dir %s` (or fix the JSON by hand)", path, err, dir)
	}
	return l, nil
}

// WriteLock writes dir/backup.lock atomically and durably (temp file, fsync,
// rename, directory fsync).
func WriteLock(dir string, l Lock) error {
	data, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	return durable.WriteFile(filepath.Join(dir, LockFile), data, 0o600)
}
