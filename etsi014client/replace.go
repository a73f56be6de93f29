package etsi014client

import (
	"context"
	"errors"
	"net/http"
)

// ReplaceKeys has the KME replace keys the caller (the master SAE) got with
// EncKeys for slaveSAEID and no longer trusts (POST
// /api/v1/keys/{slave}/replace_keys, a qkdnet extension of ETSI 014). The
// old keys are destroyed at the slave SAE's KME; the answer holds one new key
// of the same size per ID, in the same order, each with
// key_ID_extension {"replaces": old key_ID}. A 503 destroyed nothing the
// retry needs: send the same request again.
func (c *Client) ReplaceKeys(ctx context.Context, slaveSAEID string, ids ...string) (*KeyContainer, error) {
	if len(ids) == 0 {
		return nil, errors.New("etsi014client: replace_keys needs at least one key_ID")
	}
	body := keyIDs{KeyIDs: make([]keyID, len(ids))}
	for i, id := range ids {
		body.KeyIDs[i] = keyID{KeyID: id}
	}
	var kc KeyContainer
	if err := c.do(ctx, "replace_keys", http.MethodPost, slaveSAEID, "replace_keys", body, &kc); err != nil {
		return nil, err
	}
	return &kc, nil
}
