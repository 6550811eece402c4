package harness

import (
	"fmt"
	"os/exec"
	"path/filepath"
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
