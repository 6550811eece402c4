package backupplugin

import (
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/backendtest"
)

// The unit tests' fake keeps the contract of the backends it stands for.
func TestFakeConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Fake(func() lnvault.Backend { return &memBackend{} }))
}
