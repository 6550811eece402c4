package scb

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Caller calls lightningd's JSON-RPC (clnrpc.Client satisfies it).
type Caller interface {
	Call(ctx context.Context, method string, params, result any) error
}

// CLNSource fetches Core Lightning's per-channel SCBs with `staticbackup`.
// It must never be called from inside the db_write hook: lightningd would
// deadlock waiting for the hook's answer.
type CLNSource struct {
	RPC Caller
}

// Fetch implements Source.
func (s CLNSource) Fetch(ctx context.Context) (Backup, error) {
	var res struct {
		SCB []string `json:"scb"`
	}
	if err := s.RPC.Call(ctx, "staticbackup", nil, &res); err != nil {
		return Backup{}, fmt.Errorf("staticbackup: %w", err)
	}
	set, err := NewCLNSet(res.SCB)
	if err != nil {
		return Backup{}, fmt.Errorf("staticbackup answer: %w", err)
	}
	return set.Backup(), nil
}

// CLNSet is the current set of Core Lightning channel backups: channel id →
// hex SCB (the TLV of one channel, as staticbackup returns it).
type CLNSet map[string]string

// CLNChannelID returns the channel id inside one staticbackup entry: the entry
// starts with a u64 id then the 32-byte channel id. Entries too short for
// that are keyed by their whole hex.
func CLNChannelID(scbHex string) string {
	if len(scbHex) >= 16+64 {
		return strings.ToLower(scbHex[16 : 16+64])
	}
	return strings.ToLower(scbHex)
}

// NewCLNSet checks entries (non-empty hex) and indexes them by channel id.
func NewCLNSet(entries []string) (CLNSet, error) {
	set := make(CLNSet, len(entries))
	for i, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			return nil, fmt.Errorf("entry %d is empty", i)
		}
		if _, err := hex.DecodeString(e); err != nil {
			return nil, fmt.Errorf("entry %d is not hex: %v", i, err)
		}
		id := CLNChannelID(e)
		if old, dup := set[id]; dup && old != e {
			// Two different backups for one channel: keep both rather than
			// guess which one recovery needs.
			id = e
		}
		set[id] = e
	}
	return set, nil
}

// Pack returns the set as recoverchannel's scb parameter: a JSON array of the
// hex strings, ordered by channel id so that an unchanged set packs to the
// same bytes.
func (s CLNSet) Pack() []byte {
	ids := make([]string, 0, len(s))
	for id := range s {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = s[id]
	}
	b, _ := json.Marshal(out) // []string cannot fail
	return b
}

// Backup packs the set as a KindCLN backup.
func (s CLNSet) Backup() Backup {
	return NewBackup(KindCLN, s.Pack(), len(s))
}

// ParseCLN reads a packed KindCLN backup, or the whole staticbackup answer
// ({"scb": [...]}), and returns the set. It is how `scb put` accepts the
// output of `lightning-cli staticbackup`.
func ParseCLN(data []byte) (CLNSet, error) {
	var entries []string
	if err := json.Unmarshal(data, &entries); err != nil {
		var obj struct {
			SCB *[]string `json:"scb"`
		}
		if err2 := json.Unmarshal(data, &obj); err2 != nil || obj.SCB == nil {
			return nil, fmt.Errorf("%w: expected a JSON array of hex strings or a staticbackup answer {\"scb\": [...]}", ErrInvalid)
		}
		entries = *obj.SCB
	}
	set, err := NewCLNSet(entries)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return set, nil
}

// CLNSubscriptions are the notifications the plugin subscribes to for the
// keeper (getmanifest "subscriptions").
var CLNSubscriptions = []string{"channel_opened", "channel_state_changed"}

// CLNEvent turns a lightningd notification into a keeper Event; ok is false
// for other topics. Malformed params still yield an event: a re-fetch costs
// little and a missed channel costs funds.
func CLNEvent(topic string, params json.RawMessage) (ev Event, ok bool) {
	switch topic {
	case "channel_opened":
		var p struct {
			ChannelOpened struct {
				ID          string `json:"id"`
				FundingTxid string `json:"funding_txid"`
			} `json:"channel_opened"`
		}
		_ = json.Unmarshal(params, &p)
		return Event{Type: EventOpened, ChannelID: p.ChannelOpened.FundingTxid}, true
	case "channel_state_changed":
		var p struct {
			C struct {
				ChannelID string `json:"channel_id"`
				NewState  string `json:"new_state"`
			} `json:"channel_state_changed"`
		}
		_ = json.Unmarshal(params, &p)
		t := EventStateChanged
		if strings.HasPrefix(p.C.NewState, "CLOSED") || p.C.NewState == "ONCHAIN" || p.C.NewState == "FUNDING_SPEND_SEEN" {
			t = EventClosed
		}
		return Event{Type: t, ChannelID: p.C.ChannelID}, true
	}
	return Event{}, false
}
