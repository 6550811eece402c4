package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reg      *prometheus.Registry
	received *prometheus.CounterVec
	// The two series of received, resolved once: no label lookup on the
	// ack path, and both are exported from the start.
	receivedChange, receivedSnapshot prometheus.Counter
	bytes                            prometheus.Counter
	ackLatency                       prometheus.Histogram
	connections                      prometheus.Gauge
	connectionsTotal                 prometheus.Counter
	refusals                         *prometheus.CounterVec
	takeovers                        prometheus.Counter
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lnvault_server_changes_received_total", Help: "CHANGE and SNAPSHOT packets received.",
		}, []string{"kind"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lnvault_server_received_bytes_total", Help: "Bytes of CHANGE and SNAPSHOT packets received (compressed, as on the wire).",
		}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lnvault_server_ack_latency_seconds", Help: "From a change fully received until its ACK is sent (storing it durably included).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lnvault_server_connections", Help: "Open client connections.",
		}),
		connectionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lnvault_server_connections_total", Help: "Client connections accepted.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lnvault_server_refusals_total", Help: "Requests refused with a NACK, or connections closed for a bad packet, by reason.",
		}, []string{"reason"}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lnvault_server_writer_takeovers_total", Help: "Writer connections taken over by a new connection of the same client (the old one was half-open).",
		}),
	}
	m.receivedChange = m.received.WithLabelValues("change")
	m.receivedSnapshot = m.received.WithLabelValues("snapshot")
	version := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lnvault_server_backup_version", Help: "The backup's head version.",
	}, func() float64 { return float64(s.b.Metadata().Version) })
	count := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lnvault_server_backup_version_count", Help: "Changes stored in the backup (its version_count).",
	}, func() float64 { return float64(s.b.Metadata().VersionCount) })
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lnvault_server_backup_size_bytes", Help: "Bytes used by the backup, as its backend reports them.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := s.b.Status(ctx)
		if err != nil {
			return -1
		}
		return float64(st.Size)
	})
	m.reg.MustRegister(m.received, m.bytes, m.ackLatency, m.connections, m.connectionsTotal, m.refusals, m.takeovers, version, count, size)
	return m
}
