package scb

import (
	"fmt"
	"os"
	"strings"

	"filippo.io/age"
)

// ParseRecipients returns the age recipients given on the command line
// (age1... strings) and in recipients files (one per line, # comments).
func ParseRecipients(keys []string, files []string) ([]age.Recipient, error) {
	var out []age.Recipient
	for _, k := range keys {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		rs, err := age.ParseRecipients(strings.NewReader(k))
		if err != nil {
			return nil, fmt.Errorf("invalid age recipient %q: %v (expected an age1... public key, e.g. from age-keygen -y)", short(k), err)
		}
		out = append(out, rs...)
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("reading recipients file: %w", err)
		}
		rs, err := age.ParseRecipients(fh)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("recipients file %s: %v (one age1... public key per line)", f, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// ReadIdentities reads age identities (AGE-SECRET-KEY-1... lines) from files.
func ReadIdentities(files []string) ([]age.Identity, error) {
	var out []age.Identity
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("reading identity file: %w", err)
		}
		ids, err := age.ParseIdentities(fh)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("identity file %s: %v (expected AGE-SECRET-KEY-1... lines, as age-keygen writes)", f, err)
		}
		out = append(out, ids...)
	}
	return out, nil
}

// short keeps a possibly secret argument out of error messages.
func short(s string) string {
	if len(s) > 12 {
		return s[:12] + "..."
	}
	return s
}
