package s3_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/internal/backendtest"
	"github.com/lnvault/lnvault/internal/s3test"
)

// Tests open URLs: wire the storage in, as the binary does.
func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(m.Run())
}

// s3:// on a real S3 server (versitygw) and dir:// keep the Backend contract.
func TestConformance(t *testing.T) {
	endpoint, bucket := s3test.Start(t)
	n := 0
	subjects := map[string]func(t *testing.T) string{
		"s3": func(t *testing.T) string {
			n++
			return s3test.URL(endpoint, bucket, fmt.Sprintf("conformance-%d", n))
		},
		"dir": func(t *testing.T) string { return "dir://" + t.TempDir() },
	}
	for name, newURL := range subjects {
		t.Run(name, func(t *testing.T) {
			backendtest.Run(t, func(t *testing.T) backendtest.Subject {
				u := newURL(t)
				return backendtest.Subject{Empties: true, Open: func(ctx context.Context, o lnvault.OpenOptions) (lnvault.Backend, error) {
					return lnvault.Open(ctx, u, o)
				}}
			})
		})
	}
}
