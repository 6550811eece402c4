package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildLnvault builds the real lnvault command into dir and returns its
// path: the tests run the binary users run.
func BuildLnvault(dir string) (string, error) {
	bin := filepath.Join(dir, "lnvault")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/lnvault/lnvault/cmd/lnvault").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building lnvault: %v\n%s", err, out)
	}
	return bin, nil
}

// RunWithLnvault is a TestMain body: it builds lnvault into a temp
// directory (named with prefix: short, for unix socket paths), sets *bin and
// runs m. It returns the exit code.
func RunWithLnvault(m *testing.M, prefix string, bin *string) int {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bin, err = BuildLnvault(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
