package file

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"runtime/pprof"
)

func TestZZDebugFuzz(t *testing.T) {
	seeds, _ := filepath.Glob("testdata/fuzz/FuzzOpenStream/*")
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		raw, _ := os.ReadFile(seeds[rng.IntN(len(seeds))])
		s := string(raw[len("go test fuzz v1\n[]byte(") : len(raw)-2])
		u, err := strconv.Unquote(s)
		if err != nil { t.Fatal(err) }
		data := []byte(u)
		for k := 0; k < 1+rng.IntN(4); k++ {
			if len(data) == 0 { break }
			switch rng.IntN(3) {
			case 0: data[rng.IntN(len(data))] = byte(rng.IntN(256))
			case 1: data = data[:rng.IntN(len(data))]
			case 2: p := rng.IntN(len(data)); data = append(data[:p:p], append([]byte{byte(rng.IntN(256)), 0xff, 0xff}, data[p:]...)...)
			}
		}
		done := make(chan struct{})
		go func() {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				os.WriteFile("/tmp/hang.bin", data, 0o600)
				pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
				os.Exit(9)
			}
		}()
		fuzzBody(t, data)
		close(done)
	}
}
