package kmm

import (
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/qkdnet/qkdnet/kmm/keystore"
)

// servedID is a key_ID of the form keystore issues, for sequence number seq.
func servedID(seq uint64) string {
	var u uuid.UUID
	for i := 5; i >= 0; i-- {
		u[i] = byte(seq)
		seq >>= 8
	}
	u[6], u[7], u[8] = 0x80, 31, 0x80|0x15
	return u.String()
}

// The plans the agent sets say which generation is served and what a peer's
// stream is; dec_keys finds the generation from the key_IDs and refuses a
// request that mixes two.
func TestGenerations(t *testing.T) {
	k := &KMM{relay: relays{wake: make(chan struct{}, 1)}}
	const master, slave = "SAE_A", "SAE_C"
	base := StreamID(master, slave)
	g1 := GenStreamID(base, 1)
	if g1 == base || GenStreamID(base, 0) != base || GenFirstSeq(1) != 1<<40 || genOfSeq(GenFirstSeq(7)+12345) != 7 {
		t.Fatalf("generation names or sequence numbers wrong: %q %d", g1, GenFirstSeq(1))
	}
	if gen, st := k.currentGen(base); gen != 0 || st != base {
		t.Fatalf("without plans: generation %d stream %q", gen, st)
	}
	k.SetRelays([]RelayPlan{
		{Stream: base, Base: base, Gen: 0, Draining: true, Out: &RelayHop{Stream: base, Link: "AB", Peer: "B"}},
		{Stream: g1, Base: base, Gen: 1, Out: &RelayHop{Stream: g1, Link: "DA", Peer: "D"}},
	})
	if gen, st := k.currentGen(base); gen != 1 || st != g1 {
		t.Fatalf("current generation %d stream %q, want 1 %q", gen, st, g1)
	}
	if st := k.planned(keystore.Stream{ID: g1, Link: "DA"}); st.FirstSeq != 1<<40 || st.Draining {
		t.Errorf("peer's stream %s planned as %+v", g1, st)
	}
	if st := k.planned(keystore.Stream{ID: base, Link: "AB"}); st.FirstSeq != 0 || !st.Draining {
		t.Errorf("peer's stream %s planned as %+v", base, st)
	}

	old, cur := servedID(5), servedID(GenFirstSeq(1)+5)
	if seq, ok := keystore.KeyIDSeq(cur); !ok || seq != GenFirstSeq(1)+5 {
		t.Fatalf("KeyIDSeq(%s) = %d, %v", cur, seq, ok)
	}
	for _, c := range []struct {
		ids  []string
		want string
	}{
		{[]string{old}, base},
		{[]string{cur, servedID(GenFirstSeq(1) + 9)}, g1},
		{[]string{"not-a-key-id", cur}, g1},
	} {
		got, err := k.decStream(master, slave, c.ids)
		if err != nil || got != c.want {
			t.Errorf("decStream(%v) = %q, %v; want %q", c.ids, got, err, c.want)
		}
	}
	if _, err := k.decStream(master, slave, []string{old, cur}); err == nil || !strings.Contains(err.Error(), "two paths") {
		t.Errorf("key_IDs of two generations: %v", err)
	}
}
