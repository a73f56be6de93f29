package remote_test

import "crypto/tls"

type tlsCert = tls.Certificate
