// Package dumphash computes the SHA-256 of `sqlite3 DB .dump`, the check the
// corpus ships with, using the sqlite3 command line tool.
package dumphash

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os/exec"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
)

// Available tells whether the sqlite3 command line tool is on PATH.
func Available() bool {
	_, err := exec.LookPath("sqlite3")
	return err == nil
}

// Of returns the hex SHA-256 of `sqlite3 path .dump`.
func Of(path string) (string, error) {
	bin, err := exec.LookPath("sqlite3")
	if err != nil {
		return "", fmt.Errorf("the sqlite3 command line tool is needed to hash a dump (apt-get install sqlite3): %w", err)
	}
	cmd := exec.Command(bin, path, ".dump")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, out); err != nil {
		cmd.Wait()
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("sqlite3 %s .dump: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// OfReplay applies cs with dbapply to a new database at path and returns its
// dump hash: what a backup of exactly cs must restore.
func OfReplay(ctx context.Context, path string, cs []*lnvault.Change) (string, error) {
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		return "", err
	}
	for _, c := range cs {
		if err := a.Apply(ctx, c); err != nil {
			a.Close(ctx)
			return "", fmt.Errorf("replaying version %d: %w", c.Version, err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		return "", err
	}
	return Of(path)
}
