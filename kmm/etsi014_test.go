package kmm

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	qkdv1 "github.com/qkdnet/qkdnet/gen/go/qkd/v1"
	"github.com/qkdnet/qkdnet/pki"
)

// TestEncDecRoundTrip: the master SAE gets keys with enc_keys at its KMM, the
// slave SAE gets the same bits under the same key_IDs with dec_keys at the
// other KMM, in both directions of the link (B is the link's Slave KMM, so
// SAE_B's requests go through OpenStream and RequestAllocation to A).
func TestEncDecRoundTrip(t *testing.T) {
	tests := []struct {
		desc          string
		encNode       string // "A" or "B"
		master, slave string
		number, size  int
		wantKeys      int
		wantBytes     int
	}{
		{desc: "A to B defaults", encNode: "A", master: saeA, slave: saeB, wantKeys: 1, wantBytes: 32},
		{desc: "A to B 256 bits", encNode: "A", master: saeA, slave: saeB, number: 3, size: 256, wantKeys: 3, wantBytes: 32},
		{desc: "A to B 8 bits", encNode: "A", master: saeA, slave: saeB, number: 2, size: 8, wantKeys: 2, wantBytes: 1},
		{desc: "A to B 512 bits", encNode: "A", master: saeA, slave: saeB, number: 2, size: 512, wantKeys: 2, wantBytes: 64},
		{desc: "A to B 264 bits", encNode: "A", master: saeA, slave: saeB, number: 2, size: 264, wantKeys: 2, wantBytes: 33},
		{desc: "A to B 1000 bits (125 bytes, a multiple of 8)", encNode: "A", master: saeA, slave: saeB, number: 1, size: 1000, wantKeys: 1, wantBytes: 125},
		{desc: "A2 to C 8192 bits", encNode: "A", master: saeA2, slave: saeC, number: 1, size: 8192, wantKeys: 1, wantBytes: 1024},
		{desc: "B to A 256 bits", encNode: "B", master: saeB, slave: saeA, number: 4, size: 256, wantKeys: 4, wantBytes: 32},
		{desc: "B to A 8 bits", encNode: "B", master: saeB, slave: saeA, number: 2, size: 8, wantKeys: 2, wantBytes: 1},
		{desc: "B to A 512 bits", encNode: "B", master: saeB, slave: saeA, number: 1, size: 512, wantKeys: 1, wantBytes: 64},
		{desc: "C to A2 264 bits", encNode: "B", master: saeC, slave: saeA2, number: 3, size: 264, wantKeys: 3, wantBytes: 33},
	}
	p := newTestPair(t, nil)
	supplied := p.supply(t, 200)
	fed := map[string]bool{}
	for _, k := range supplied {
		fed[string(k.bits)] = true
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			encAt, decAt := p.a, p.b
			if tc.encNode == "B" {
				encAt, decAt = p.b, p.a
			}
			got, err := enc(t, encAt, tc.master, tc.slave, tc.number, tc.size)
			if err != nil {
				t.Fatalf("enc_keys: %v", err)
			}
			if len(got.GetKeys()) != tc.wantKeys {
				t.Fatalf("enc_keys gave %d keys, want %d", len(got.GetKeys()), tc.wantKeys)
			}
			for _, k := range got.GetKeys() {
				if len(k.GetKey()) != tc.wantBytes {
					t.Errorf("key %s has %d bytes, want %d", k.GetKeyId(), len(k.GetKey()), tc.wantBytes)
				}
				if tc.wantBytes == linkKeyBytes && !fed[string(k.GetKey())] {
					t.Errorf("key %s of one link key's size is not a key the link supplied", k.GetKeyId())
				}
			}
			back, err := dec(t, decAt, tc.slave, tc.master, keyIDs(got)...)
			if err != nil {
				t.Fatalf("dec_keys: %v", err)
			}
			if len(back.GetKeys()) != len(got.GetKeys()) {
				t.Fatalf("dec_keys gave %d keys, want %d", len(back.GetKeys()), len(got.GetKeys()))
			}
			for i, k := range got.GetKeys() {
				b := back.GetKeys()[i]
				if b.GetKeyId() != k.GetKeyId() {
					t.Errorf("key %d: dec key_ID %s, enc key_ID %s", i, b.GetKeyId(), k.GetKeyId())
				}
				if !bytes.Equal(b.GetKey(), k.GetKey()) {
					t.Errorf("key %s: the two ends disagree on its bits", k.GetKeyId())
				}
			}
			// Invariant 1: served at most once to each SAE.
			_, err = dec(t, decAt, tc.slave, tc.master, keyIDs(got)[0])
			checkErr(t, err, codes.InvalidArgument, "key_ID")
		})
	}
}

// TestDecKeysGetStyle: GET dec_keys names one key in key_ID (the query
// parameter) instead of the key_IDs body.
func TestDecKeysGetStyle(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	got, err := enc(t, p.a, saeA, saeB, 2, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	for _, k := range got.GetKeys() {
		back, err := p.b.k.GetKeyWithKeyIDs(asSAE(t, saeB), &qkdv1.GetKeyWithKeyIDsRequest{MasterSaeId: saeA, KeyId: k.GetKeyId()})
		if err != nil {
			t.Fatalf("GET dec_keys %s: %v", k.GetKeyId(), err)
		}
		if len(back.GetKeys()) != 1 || back.GetKeys()[0].GetKeyId() != k.GetKeyId() || !bytes.Equal(back.GetKeys()[0].GetKey(), k.GetKey()) {
			t.Fatalf("GET dec_keys %s = %v, want the enc_keys key", k.GetKeyId(), back)
		}
		_, err = p.b.k.GetKeyWithKeyIDs(asSAE(t, saeB), &qkdv1.GetKeyWithKeyIDsRequest{MasterSaeId: saeA, KeyId: k.GetKeyId()})
		checkErr(t, err, codes.InvalidArgument, "key_ID")
	}
}

// TestEncKeysBadRequest: every request the SAE got wrong is a 400
// (InvalidArgument) naming the parameter, and nothing is served.
func TestEncKeysBadRequest(t *testing.T) {
	ext := func(name string) []*structpb.Struct {
		s, _ := structpb.NewStruct(map[string]any{name: true})
		return []*structpb.Struct{s}
	}
	tests := []struct {
		desc      string
		caller    string
		input     *qkdv1.GetKeyRequest
		wantField string
	}{
		{desc: "number -1", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, Number: -1}, wantField: "number"},
		{desc: "number above max_key_per_request", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, Number: 65}, wantField: "number"},
		{desc: "size not a multiple of 8", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, Size: 1004}, wantField: "size"},
		{desc: "size 7", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, Size: 7}, wantField: "size"},
		{desc: "size below min", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, Size: -8}, wantField: "size"},
		{desc: "size above max", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, Size: 8200}, wantField: "size"},
		{desc: "additional slaves", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, AdditionalSlaveSaeIds: []string{saeC}}, wantField: "additional_slave_SAE_IDs"},
		{desc: "extension_mandatory", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeB, ExtensionMandatory: ext("abc_route_type")}, wantField: "extension_mandatory"},
		{desc: "unknown slave", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: "SAE_Z"}, wantField: "slave_SAE_ID"},
		{desc: "empty slave", caller: saeA, input: &qkdv1.GetKeyRequest{}, wantField: "slave_SAE_ID"},
		{desc: "slave is the caller", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeA}, wantField: "slave_SAE_ID"},
		{desc: "slave on the same node", caller: saeA, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeA2}, wantField: "slave_SAE_ID"},
		{desc: "slave on the same node at the link's Slave KMM", caller: saeB, input: &qkdv1.GetKeyRequest{SlaveSaeId: saeC}, wantField: "slave_SAE_ID"},
	}
	p := newTestPair(t, nil)
	p.supply(t, 10)
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			n := p.a
			if tc.caller == saeB {
				n = p.b
			}
			before := n.store.PoolCount(linkAB)
			got, err := n.k.GetKey(asSAE(t, tc.caller), tc.input)
			if got != nil {
				t.Errorf("served %d keys with the error", len(got.GetKeys()))
			}
			checkErr(t, err, codes.InvalidArgument, tc.wantField)
			if after := n.store.PoolCount(linkAB); after != before {
				t.Errorf("pool went from %d to %d keys on a bad request", before, after)
			}
		})
	}
	// The extension the KME refuses is named in the message.
	_, err := p.a.k.GetKey(asSAE(t, saeA), &qkdv1.GetKeyRequest{SlaveSaeId: saeB, ExtensionMandatory: ext("abc_route_type")})
	if !strings.Contains(status.Convert(err).Message(), "abc_route_type") {
		t.Errorf("message %q does not name the unsupported extension", status.Convert(err).Message())
	}
}

// TestDecKeysBadRequest: dec_keys requests that are invalid in themselves
// are 400 naming the parameter.
func TestDecKeysBadRequest(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	got, err := enc(t, p.a, saeA, saeB, 2, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	good := keyIDs(got)
	// A well-formed served key_ID (version 8, variant 10) this KMM never issued.
	const neverIssued = "00000000-0000-8000-8000-000000000000"
	many := make([]string, 65)
	for i := range many {
		many[i] = neverIssued
	}
	tests := []struct {
		desc      string
		input     *qkdv1.GetKeyWithKeyIDsRequest
		wantField string
	}{
		{desc: "no key_IDs", input: decReq(saeA), wantField: "key_IDs"},
		{desc: "empty key_ID in key_IDs", input: decReq(saeA, ""), wantField: "key_IDs[0].key_ID"},
		{desc: "more key_IDs than max_key_per_request", input: decReq(saeA, many...), wantField: "key_IDs"},
		{desc: "malformed key_ID", input: decReq(saeA, "not-a-uuid"), wantField: "key_ID"},
		{desc: "random UUIDv4 key_ID", input: decReq(saeA, "0b6e3f3c-7c4e-4e0a-9d55-3f0a4c2b9f11"), wantField: "key_ID"},
		{desc: "unknown key_ID", input: decReq(saeA, neverIssued), wantField: "key_ID"},
		{desc: "unknown key_ID after a good one", input: decReq(saeA, good[0], neverIssued), wantField: "key_ID"},
		{desc: "duplicate key_ID", input: decReq(saeA, good[0], good[0]), wantField: "key_ID"},
		{desc: "unknown master_SAE_ID", input: decReq("SAE_Z", good[0]), wantField: "master_SAE_ID"},
		{desc: "master_SAE_ID names another SAE of the master's node", input: decReq(saeA2, good[0]), wantField: "key_ID"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			res, err := p.b.k.GetKeyWithKeyIDs(asSAE(t, saeB), tc.input)
			if res != nil {
				t.Errorf("served %d keys with the error", len(res.GetKeys()))
			}
			checkErr(t, err, codes.InvalidArgument, tc.wantField)
		})
	}
	// Nothing was served by the failed requests: both keys are still there.
	back, err := dec(t, p.b, saeB, saeA, good...)
	if err != nil || len(back.GetKeys()) != 2 {
		t.Fatalf("dec_keys after the bad requests = %v, %v; want both keys", back, err)
	}
}

// TestUnauthorized: 401 (Unauthenticated) for callers that may not make the
// call, including an SAE asking for a key issued to another SAE.
func TestUnauthorized(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	got, err := enc(t, p.a, saeA, saeB, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys: %v", err)
	}
	forB := keyIDs(got)[0]
	gotRev, err := enc(t, p.b, saeB, saeA, 1, 256)
	if err != nil {
		t.Fatalf("enc_keys B→A: %v", err)
	}
	forA := keyIDs(gotRev)[0]
	// SAE_C has a stream of its own from SAE_A, holding keys.
	if _, err := enc(t, p.a, saeA, saeC, 2, 256); err != nil {
		t.Fatalf("enc_keys A→C: %v", err)
	}

	node := pki.Identity{Kind: pki.KindNode, ID: "B"}
	tests := []struct {
		desc   string
		at     string // node called
		caller *pki.Identity
		call   string // "status", "enc" or "dec"
		peer   string // slave for status/enc, master for dec
		keyID  string
	}{
		{desc: "enc no identity", at: "A", call: "enc", peer: saeB},
		{desc: "status no identity", at: "A", call: "status", peer: saeB},
		{desc: "dec no identity", at: "B", call: "dec", peer: saeA, keyID: forB},
		{desc: "enc node identity", at: "A", caller: &node, call: "enc", peer: saeB},
		{desc: "dec node identity", at: "B", caller: &node, call: "dec", peer: saeA, keyID: forB},
		{desc: "status node identity", at: "A", caller: &node, call: "status", peer: saeB},
		{desc: "enc SAE of node B at KMM A", at: "A", caller: &pki.Identity{Kind: pki.KindSAE, ID: saeB}, call: "enc", peer: saeA},
		{desc: "status SAE of node B at KMM A", at: "A", caller: &pki.Identity{Kind: pki.KindSAE, ID: saeC}, call: "status", peer: saeA},
		{desc: "dec SAE of node A at KMM B", at: "B", caller: &pki.Identity{Kind: pki.KindSAE, ID: saeA2}, call: "dec", peer: saeA, keyID: forB},
		{desc: "enc unknown SAE", at: "A", caller: &pki.Identity{Kind: pki.KindSAE, ID: "SAE_Z"}, call: "enc", peer: saeB},
		{desc: "dec SAE_C for a key issued to SAE_B", at: "B", caller: &pki.Identity{Kind: pki.KindSAE, ID: saeC}, call: "dec", peer: saeA, keyID: forB},
		{desc: "dec SAE_A2 for a key issued to SAE_A", at: "A", caller: &pki.Identity{Kind: pki.KindSAE, ID: saeA2}, call: "dec", peer: saeB, keyID: forA},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			n := p.a
			if tc.at == "B" {
				n = p.b
			}
			ctx := anonymous(t)
			if tc.caller != nil {
				ctx = asCaller(t, *tc.caller)
			}
			var err error
			switch tc.call {
			case "status":
				_, err = n.k.GetStatus(ctx, &qkdv1.GetStatusRequest{SlaveSaeId: tc.peer})
			case "enc":
				_, err = n.k.GetKey(ctx, &qkdv1.GetKeyRequest{SlaveSaeId: tc.peer})
			case "dec":
				_, err = n.k.GetKeyWithKeyIDs(ctx, decReq(tc.peer, tc.keyID))
			}
			checkErr(t, err, codes.Unauthenticated, "")
		})
	}
	// The keys the intruders asked for are still there for their SAEs.
	if _, err := dec(t, p.b, saeB, saeA, forB); err != nil {
		t.Errorf("SAE_B dec_keys after the refused requests: %v", err)
	}
	if _, err := dec(t, p.a, saeA, saeB, forA); err != nil {
		t.Errorf("SAE_A dec_keys after the refused requests: %v", err)
	}
}

// TestNotEnoughKeys: an empty (or too small) pool is 503 (Unavailable) with a
// message that says so, at the link's Master and at its Slave KMM.
func TestNotEnoughKeys(t *testing.T) {
	tests := []struct {
		desc         string
		supply       int
		encNode      string
		master       string
		slave        string
		number, size int
	}{
		{desc: "empty pool at master KMM", supply: 0, encNode: "A", master: saeA, slave: saeB, number: 1},
		{desc: "empty pool at slave KMM", supply: 0, encNode: "B", master: saeB, slave: saeA, number: 1},
		{desc: "too few keys at master KMM", supply: 3, encNode: "A", master: saeA, slave: saeB, number: 4, size: 256},
		{desc: "too few keys for the size", supply: 3, encNode: "A", master: saeA, slave: saeB, number: 2, size: 512},
		{desc: "too few keys at slave KMM", supply: 3, encNode: "B", master: saeB, slave: saeA, number: 4, size: 256},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			p := newTestPair(t, nil)
			if tc.supply > 0 {
				p.supply(t, tc.supply)
			}
			n := p.a
			if tc.encNode == "B" {
				n = p.b
			}
			_, err := enc(t, n, tc.master, tc.slave, tc.number, tc.size)
			checkErr(t, err, codes.Unavailable, "")
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "not enough key") {
				t.Errorf("message %q does not say there is not enough key", msg)
			}
			// The keys that were there are not lost: a request that fits works.
			if tc.supply > 0 {
				if _, err := enc(t, n, tc.master, tc.slave, 1, 256); err != nil {
					t.Errorf("enc_keys of 1 key after the 503: %v", err)
				}
			}
		})
	}
}

// TestGetStatus checks every field of the 014 status, at the link's Master
// and at its Slave KMM, and that stored_key_count grows after allocation.
func TestGetStatus(t *testing.T) {
	tests := []struct {
		desc          string
		at            string
		master, slave string
		wantSource    string
		wantTarget    string
		wantRole      string
	}{
		{desc: "at master KMM", at: "A", master: saeA, slave: saeB, wantSource: "KME_A", wantTarget: "KME_B", wantRole: "master"},
		{desc: "at slave KMM", at: "B", master: saeC, slave: saeA2, wantSource: "KME_B", wantTarget: "KME_A", wantRole: "slave"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			p := newTestPair(t, nil)
			n := p.a
			if tc.at == "B" {
				n = p.b
			}
			get := func() *qkdv1.Status {
				t.Helper()
				s, err := n.k.GetStatus(asSAE(t, tc.master), &qkdv1.GetStatusRequest{SlaveSaeId: tc.slave})
				if err != nil {
					t.Fatalf("GetStatus: %v", err)
				}
				return s
			}
			s := get()
			if s.GetSourceKmeId() != tc.wantSource || s.GetTargetKmeId() != tc.wantTarget ||
				s.GetMasterSaeId() != tc.master || s.GetSlaveSaeId() != tc.slave {
				t.Errorf("IDs = %s→%s, %s→%s; want %s→%s, %s→%s", s.GetSourceKmeId(), s.GetTargetKmeId(),
					s.GetMasterSaeId(), s.GetSlaveSaeId(), tc.wantSource, tc.wantTarget, tc.master, tc.slave)
			}
			set := n.k.Settings()
			for _, f := range []struct {
				name      string
				got, want int32
			}{
				{"key_size", s.GetKeySize(), 256},
				{"stored_key_count", s.GetStoredKeyCount(), 0},
				{"max_key_count", s.GetMaxKeyCount(), int32(set.DefaultQoS.MaxBuffer)},
				{"max_key_per_request", s.GetMaxKeyPerRequest(), 64},
				{"max_key_size", s.GetMaxKeySize(), 8192},
				{"min_key_size", s.GetMinKeySize(), 8},
				{"max_SAE_ID_count", s.GetMaxSaeIdCount(), 0},
			} {
				if f.got != f.want {
					t.Errorf("%s = %d, want %d", f.name, f.got, f.want)
				}
			}
			ext := s.GetStatusExtension().AsMap()
			if ext["kmm_role"] != tc.wantRole || ext["link_id"] != linkAB || ext["stream_id"] != StreamID(tc.master, tc.slave) {
				t.Errorf("status_extension = %v", ext)
			}
			for _, k := range []string{"qos", "pool_keys", "stream_keys", "link_stats", "stream_stats"} {
				if _, ok := ext[k]; !ok {
					t.Errorf("status_extension lacks %q: %v", k, ext)
				}
			}

			// Allocation (the Master's periodic cycle) makes keys available.
			p.supply(t, 40)
			p.a.k.alloc.Cycle(asSAE(t, saeA))
			s = get()
			if s.GetStoredKeyCount() != 40 {
				t.Errorf("stored_key_count after allocating 40 keys = %d, want 40", s.GetStoredKeyCount())
			}
			ext = s.GetStatusExtension().AsMap()
			link, _ := ext["link_stats"].(map[string]any)
			stream, _ := ext["stream_stats"].(map[string]any)
			if link["supplied"] != 40.0 || link["allocated"] != 40.0 || stream["allocated"] != 40.0 || ext["stream_keys"] != 40.0 || ext["pool_keys"] != 0.0 {
				t.Errorf("status_extension after allocation = %v", ext)
			}
			// Serving counts down, and the statistics say so.
			if _, err := enc(t, n, tc.master, tc.slave, 5, 512); err != nil {
				t.Fatalf("enc_keys: %v", err)
			}
			s = get()
			stream, _ = s.GetStatusExtension().AsMap()["stream_stats"].(map[string]any)
			if s.GetStoredKeyCount() != 30 || stream["delivered_enc"] != 5.0 {
				t.Errorf("after 5 keys of 512 bits: stored_key_count %d (want 30), stream_stats %v", s.GetStoredKeyCount(), stream)
			}
		})
	}
}

// TestGetStatusBadRequest: status requests naming a bad slave are 400.
func TestGetStatusBadRequest(t *testing.T) {
	tests := []struct {
		desc, caller, slave, wantField string
	}{
		{desc: "slave is the caller", caller: saeA, slave: saeA, wantField: "slave_SAE_ID"},
		{desc: "unknown slave", caller: saeA, slave: "SAE_Z", wantField: "slave_SAE_ID"},
		{desc: "slave on the same node", caller: saeA, slave: saeA2, wantField: "slave_SAE_ID"},
	}
	p := newTestPair(t, nil)
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := p.a.k.GetStatus(asSAE(t, tc.caller), &qkdv1.GetStatusRequest{SlaveSaeId: tc.slave})
			checkErr(t, err, codes.InvalidArgument, tc.wantField)
		})
	}
}

// unconfiguredTopo is a topology that has had no configuration yet, as an
// agent's between its restart and the controller's first push.
type unconfiguredTopo struct {
	*testTopo
	ready bool
}

func (u *unconfiguredTopo) SAENode(sae string) (string, bool) {
	if !u.ready {
		return "", false
	}
	return u.testTopo.SAENode(sae)
}

func (u *unconfiguredTopo) Configured() bool { return u.ready }

// TestNotConfiguredYet: a KMM whose topology has not been configured yet
// answers its SAEs 503 (retry), not 401, which a client takes as final; this
// is what qkdchaos saw after agent restarts. Once configured, the same SAE is
// served, and an SAE of another node is refused with 401 as before.
func TestNotConfiguredYet(t *testing.T) {
	p := newTestPair(t, nil)
	p.supply(t, 10)
	topo := &unconfiguredTopo{testTopo: newTopo("A", "B", true)}
	p.a.k.topo = topo
	_, err := enc(t, p.a, saeA, saeB, 1, 256)
	checkErr(t, err, codes.Unavailable, "")
	_, err = p.a.k.GetStatus(asSAE(t, saeA), &qkdv1.GetStatusRequest{SlaveSaeId: saeB})
	checkErr(t, err, codes.Unavailable, "")
	topo.ready = true
	if _, err := enc(t, p.a, saeA, saeB, 1, 256); err != nil {
		t.Fatalf("enc_keys once configured: %v", err)
	}
	_, err = enc(t, p.a, saeB, saeA, 1, 256)
	checkErr(t, err, codes.Unauthenticated, "")
}
