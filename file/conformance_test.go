package file

import (
	"context"
	"fmt"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/backendtest"
)

// Both formats keep the Backend contract.
func TestConformance(t *testing.T) {
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("format%d", format), func(t *testing.T) {
			backendtest.Run(t, func(t *testing.T) backendtest.Subject {
				url, _ := tempURL(t, "backup.dbak")
				return backendtest.Subject{Empties: true, Open: func(ctx context.Context, o lnvault.OpenOptions) (lnvault.Backend, error) {
					o.Format = format
					o.Logger = quietLog()
					return Open(ctx, url, o)
				}}
			})
		})
	}
}
