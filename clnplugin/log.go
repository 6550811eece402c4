package clnplugin

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// LogHandler is a slog.Handler that sends each record to lightningd as a
// `log` notification: stdout carries only JSON-RPC, and lightningd puts the
// message in its own log with the plugin's name.
type LogHandler struct {
	p      *Plugin
	level  slog.Leveler
	attrs  string
	groups string
}

// NewLogHandler returns a handler that logs through p at level and above.
func NewLogHandler(p *Plugin, level slog.Leveler) *LogHandler {
	return &LogHandler{p: p, level: level}
}

// Enabled implements slog.Handler.
func (h *LogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// LevelName maps a slog level to lightningd's log levels.
func LevelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	}
	return "debug"
}

// Handle implements slog.Handler.
func (h *LogHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		writeAttr(&b, h.groups, a)
		return true
	})
	// A log line is one line in lightningd's log.
	msg := strings.ReplaceAll(b.String(), "\n", " ")
	return h.p.Notify("log", map[string]string{"level": LevelName(r.Level), "message": msg})
}

func writeAttr(b *strings.Builder, groups string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		g := groups + a.Key + "."
		if a.Key == "" {
			g = groups
		}
		for _, ga := range a.Value.Group() {
			writeAttr(b, g, ga)
		}
		return
	}
	v := a.Value.String()
	if strings.ContainsAny(v, " \t\"=") {
		v = fmt.Sprintf("%q", v)
	}
	b.WriteString(" ")
	b.WriteString(groups)
	b.WriteString(a.Key)
	b.WriteString("=")
	b.WriteString(v)
}

// WithAttrs implements slog.Handler.
func (h *LogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		writeAttr(&b, h.groups, a)
	}
	h2 := *h
	h2.attrs = b.String()
	return &h2
}

// WithGroup implements slog.Handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.groups = h.groups + name + "."
	return &h2
}
