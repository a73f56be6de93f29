package emulator_test

import (
	"crypto/tls"
	"log/slog"
)

type tlsCertificate = tls.Certificate

func slogNew(h slog.Handler) *slog.Logger { return slog.New(h) }
