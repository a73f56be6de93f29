//go:build unix

package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile, in the state dir, is held (flock) by the runner of a network, so
// two runners never share key stores and ports by accident. The kernel
// drops the lock when the runner dies, however it dies.
const lockFile = "qkdnet.lock"

func lockStateDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b := make([]byte, 32)
		k, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b[:k]))
			return nil, fmt.Errorf("state dir %s is in use by another qkdnet (pid %s); stop it or use another --state-dir", dir, pid)
		}
		return nil, fmt.Errorf("state dir %s: lock: %w", dir, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

func unlockStateDir(f *os.File) {
	if f == nil {
		return
	}
	f.Truncate(0)
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}
