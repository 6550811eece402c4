package backupplugin_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/backupplugin"
)

// The test binary is also the plugin: the harness starts it with
// LIGHTNINGD_PLUGIN=1, as lightningd starts lnvault.
func TestMain(m *testing.M) {
	backends.Register()
	if os.Getenv("LIGHTNINGD_PLUGIN") == "1" {
		lnvault.Register("flaky", openFlaky)
		os.Exit(backupplugin.Main(context.Background()))
	}
	code := m.Run()
	if corpusTmpl.dir != "" {
		os.RemoveAll(corpusTmpl.dir)
	}
	os.Exit(code)
}

// flaky:///abs/path is the file backup at /abs/path whose Append fails while
// /abs/path.fail exists: a destination that breaks while the node runs.
type flaky struct {
	lnvault.Backend
	path string
}

func openFlaky(ctx context.Context, rawURL string, opts lnvault.OpenOptions) (lnvault.Backend, error) {
	path := strings.TrimPrefix(rawURL, "flaky://")
	b, err := lnvault.Open(ctx, "file://"+path, opts)
	if err != nil {
		return nil, err
	}
	return &flaky{Backend: b, path: path}, nil
}

var errInjected = errors.New("injected failure: destination unavailable")

func (f *flaky) Append(ctx context.Context, c *lnvault.Change) error {
	if _, err := os.Stat(f.path + ".fail"); err == nil {
		return errInjected
	}
	return f.Backend.Append(ctx, c)
}
