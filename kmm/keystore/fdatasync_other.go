//go:build !linux

package keystore

import "os"

func fdatasync(f *os.File) error { return f.Sync() }
