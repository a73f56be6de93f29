package qkd015

import (
	"testing"
)

// FuzzParse: no document makes Parse or Check panic; Check refuses whatever
// Parse refuses; and what Parse accepts encodes to a document that parses
// back to the same tree.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"4b602e9f-1812-5f8b-af99-65ee3e072115"}}`,
		`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"xyz"}}`,
		`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"4b602e9f-1812-5f8b-af99-65ee3e072115","qkd_links":{"qkd_link":[{"qkdl_id":"ea59f913-d1a0-5c4d-aa34-656f98753dc7","qkdl_type":"etsi-qkd-node-types:PHYS","qkdnet-sdn-ext:kmm_role":"MASTER","qkdnet-sdn-ext:key_size":256}]}}}`,
		`{"etsi-qkd-sdn-node:qkd_node":{"qkdn_id":"4b602e9f-1812-5f8b-af99-65ee3e072115","qkd_applications":{"qkd_app":[{"app_id":"112d1c1e-555d-5434-b72e-8842200bdff7","app_qos":{"ttl":5},"qkdnet-sdn-ext:hops":{"hop":[{"index":0,"qkdl_id":"ea59f913-d1a0-5c4d-aa34-656f98753dc7","role":"SLAVE"}]}}]}}}`,
		`{"qkd_node":{}}`, `{}`, `[]`, ``, `{"etsi-qkd-sdn-node:qkd_node":{"qkdnet-sdn-ext:config_version":"18446744073709551615"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		n, err := Parse(doc)
		cerr := Check(doc)
		if err != nil {
			return
		}
		if cerr != nil {
			t.Fatalf("Parse accepts what Check refuses: %v", cerr)
		}
		b, err := Encode(n)
		if err != nil {
			t.Fatalf("Encode of a parsed tree: %v", err)
		}
		again, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse of its own encoding %s: %v", b, err)
		}
		if !Equal(n, again) {
			t.Fatalf("round trip changed the tree: %s", b)
		}
	})
}
