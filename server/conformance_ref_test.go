package server_test

import (
	"context"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/backendtest"
	"github.com/lnvault/lnvault/internal/pyref"
	"github.com/lnvault/lnvault/socket"
)

// socket: to the real Python reference server: the suite passes where the
// reference keeps the contract and asserts its known deviations elsewhere,
// so a change of the reference's behaviour shows here. Every writer's open
// after the first restarts the server.
func TestConformancePythonServer(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Subject {
		srv := pyref.StartServer(t)
		opened := false
		return backendtest.Subject{
			Open: func(ctx context.Context, o lnvault.OpenOptions) (lnvault.Backend, error) {
				if !o.ReadOnly {
					if opened {
						srv.Restart()
					}
					opened = true
				}
				o.Logger = testLogger(t)
				return socket.Open(ctx, srv.URL(), o)
			},
			Deviations: backendtest.Deviations{
				RewindReplaysOld:   true,
				RewindKeepsCount:   true,
				RewindForgotten:    true,
				OneClient:          true,
				CompactResetsCount: true,
			},
		}
	})
}
