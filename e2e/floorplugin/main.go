// Command floorplugin is the floor of the end-to-end benchmarks: the least a
// synchronous backup plugin can do. It hooks db_write, appends each
// transaction's statements to a preallocated file, fdatasyncs it, and
// answers continue. It keeps nothing else and cannot restore anything.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

type request struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params struct {
		Writes []string `json:"writes"`
	} `json:"params"`
}

func main() {
	out := bufio.NewWriter(os.Stdout)
	reply := func(id json.RawMessage, result any) {
		js, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "result": result})
		out.Write(js)
		out.WriteString("\n\n")
		out.Flush()
	}
	var f *os.File
	var off int64
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	for {
		var r request
		if err := dec.Decode(&r); err != nil {
			return
		}
		switch r.Method {
		case "getmanifest":
			reply(r.ID, map[string]any{"options": []any{}, "rpcmethods": []any{}, "hooks": []any{map[string]any{"name": "db_write"}}, "dynamic": false})
		case "init":
			reply(r.ID, map[string]any{})
		case "db_write":
			if f == nil { // db_writes come before init (migrations at start)
				var err error
				f, err = os.OpenFile(filepath.Join(".", "floor.log"), os.O_RDWR|os.O_CREATE, 0o600)
				if err == nil {
					err = syscall.Fallocate(int(f.Fd()), 0, 0, 1<<28)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "floorplugin:", err)
					os.Exit(1)
				}
			}
			for _, w := range r.Params.Writes {
				n, _ := f.WriteAt([]byte(w+"\n"), off)
				off += int64(n)
				if off > 1<<28-1<<20 {
					off = 0 // the floor needs no history
				}
			}
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				fmt.Fprintln(os.Stderr, "floorplugin:", err)
				os.Exit(1)
			}
			reply(r.ID, map[string]any{"result": "continue"})
		default:
			if len(r.ID) > 0 {
				reply(r.ID, map[string]any{})
			}
		}
	}
}
