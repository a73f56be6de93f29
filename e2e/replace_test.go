package e2e

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qkdnet/qkdnet/etsi014client"
	"github.com/qkdnet/qkdnet/testbed"
)

// replaceKeys retries replace_keys while the KME answers 503.
func replaceKeys(ctx context.Context, c *etsi014client.Client, slave string, ids ...string) (*etsi014client.KeyContainer, error) {
	return retry503(ctx, func() (*etsi014client.KeyContainer, error) { return c.ReplaceKeys(ctx, slave, ids...) })
}

// TestReplaceKeys replaces keys over REST on the rooftops A-B-C, one hop
// (SAE_A to SAE_B) and relayed through B (SAE_A to SAE_C): the slave SAE is
// refused the old key as replaced and gets the new one, the other keys are
// untouched, and a second replace is refused.
func TestReplaceKeys(t *testing.T) {
	n := upWith(t, testbed.Options{Topology: lineTopology(), Controllers: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := client(t, n, "SAE_A")
	for _, slave := range []string{"SAE_B", "SAE_C"} {
		t.Run(slave, func(t *testing.T) {
			s := client(t, n, slave)
			kc, err := encKeys(ctx, a, slave, etsi014client.KeyRequest{Number: 2, Size: 512})
			if err != nil {
				t.Fatalf("enc_keys: %v", err)
			}
			old, kept := kc.Keys[0], kc.Keys[1]
			nw, err := replaceKeys(ctx, a, slave, old.KeyID)
			if err != nil {
				t.Fatalf("replace_keys: %v", err)
			}
			if len(nw.Keys) != 1 || len(nw.Keys[0].Bytes) != 64 || nw.Keys[0].KeyID == old.KeyID || nw.Keys[0].KeyIDExtension["replaces"] != old.KeyID {
				t.Fatalf("replace_keys answered %d keys (%+v)", len(nw.Keys), nw.Keys[0].KeyIDExtension)
			}
			_, err = decKeys(ctx, s, "SAE_A", old.KeyID)
			if etsi014client.StatusCode(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "replaced at the master SAE's request") {
				t.Fatalf("dec_keys of the replaced key: %v", err)
			}
			dc, err := decKeys(ctx, s, "SAE_A", nw.Keys[0].KeyID, kept.KeyID)
			if err != nil {
				t.Fatalf("dec_keys of the new and the kept key: %v", err)
			}
			if !bytes.Equal(dc.Keys[0].Bytes, nw.Keys[0].Bytes) || !bytes.Equal(dc.Keys[1].Bytes, kept.Bytes) {
				t.Fatal("the ends disagree on the new or the kept key")
			}
			_, err = a.ReplaceKeys(ctx, slave, old.KeyID)
			if etsi014client.StatusCode(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "replaced already") {
				t.Fatalf("second replace_keys: %v", err)
			}
		})
	}
}
