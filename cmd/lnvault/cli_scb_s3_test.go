package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/lnvault/lnvault/internal/s3test"
)

// Static channel backups on S3 (a real versitygw) through the CLI:
// encrypted put, list without the key, get back exactly what
// recoverchannel takes, and no plaintext in the bucket.
func TestCLISCBOnS3(t *testing.T) {
	ep, bkt := s3test.Start(t) // sets the AWS_* variables the subprocess inherits
	dir := t.TempDir()
	rcpt, key, wrongKey := scbKeys(t, dir)
	url := s3test.URL(ep, bkt, "node")
	const marker = "feedfacefeedfacefeedfacefeedface"
	answers := []string{
		`{"scb": ["0000000000000001` + strings.Repeat("aa", 32) + marker + `"]}`,
		`{"scb": ["0000000000000002` + strings.Repeat("bb", 32) + marker + `", "0000000000000001` + strings.Repeat("aa", 32) + marker + `"]}`,
	}
	for i, a := range answers {
		in := filepath.Join(dir, "staticbackup.json")
		os.WriteFile(in, []byte(a), 0o600)
		r := mustRun(t, "scb", "put", url, "--kind", "cln-scb", "--file", in, "--recipients-file", rcpt)
		if want := "stored version " + string(rune('1'+i)); !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, "s3://"+bkt+"/node/scb") {
			t.Fatalf("put %d: %q", i, r.stdout)
		}
	}

	// The bucket holds two immutable objects under node/scb/, neither with
	// plaintext.
	c := s3test.Client(ep)
	ls, err := c.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(bkt), Prefix: aws.String("node/")})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range ls.Contents {
		keys = append(keys, aws.ToString(o.Key))
		obj, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bkt), Key: o.Key})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(obj.Body)
		obj.Body.Close()
		if bytes.Contains(raw, []byte(marker)) || bytes.Contains(raw, []byte(strings.Repeat("aa", 32))) {
			t.Fatalf("%s holds plaintext", aws.ToString(o.Key))
		}
	}
	if strings.Join(keys, ",") != "node/scb/000000000001,node/scb/000000000002" {
		t.Fatalf("objects: %v", keys)
	}

	r := mustRun(t, "scb", "list", url, "--json")
	list := scbListJSON(t, r.stdout)
	if len(list) != 2 || list[1].Seq != 2 || list[1].Channels != 2 || list[0].Channels != 1 || !list[1].Encrypted || list[1].Kind != "cln-scb" || list[1].Error != "" {
		t.Fatalf("list: %+v", list)
	}
	if r := mustRun(t, "scb", "list", url); !strings.Contains(r.stdout, "cln-scb") || strings.Count(r.stdout, "\n") != 3 {
		t.Fatalf("list table:\n%s", r.stdout)
	}

	out := filepath.Join(dir, "scb.json")
	mustRun(t, "scb", "get", url, "-o", out, "--identity", key)
	got, _ := os.ReadFile(out)
	want := `["0000000000000001` + strings.Repeat("aa", 32) + marker + `","0000000000000002` + strings.Repeat("bb", 32) + marker + `"]`
	if string(got) != want {
		t.Fatalf("get wrote %s\nwant %s", got, want)
	}
	r = mustRun(t, "scb", "get", url, "--version", "1", "-o", "-", "--identity", key)
	if r.stdout != `["0000000000000001`+strings.Repeat("aa", 32)+marker+`"]` {
		t.Fatalf("get --version 1: %s", r.stdout)
	}

	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "x"), "--identity", wrongKey), "identities", "decrypt")
	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "y")), "encrypted", "--identity")
	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "z"), "--version", "7", "--identity", key), "no version")
	assertOneLineError(t, runCLI(t, "scb", "list", s3test.URL(ep, "no-such-bucket", "node")), "does not exist")
	assertOneLineError(t, runCLI(t, "scb", "list", s3test.URL(ep, bkt, "node", "colour=blue")), "unknown parameter")
}
